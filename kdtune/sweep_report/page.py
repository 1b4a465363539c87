"""The report as one self-contained HTML page: inline CSS, figures as base64 PNG data URIs,
no script, nothing fetched, so it opens offline from disk."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape

import kdtune
from kdtune.sweep_report.figures import Drawn
from kdtune.sweep_report.sweep_data import (
    BoardRow,
    SweepData,
    Value,
    WallTime,
    counts_by_status,
    leaderboard,
)
from kdtune.versions import RECORDED_PACKAGES, package_versions
from kdtune.vocabulary import (
    TAG_GIT_SHA,
    TAG_NUM_SAMPLES,
    TAG_SPACE,
    TAG_SPACE_SHA,
    TAG_VERSION,
    TAG_VERSIONS,
)

#: Leaderboard columns: (metric, heading).
BOARD_COLUMNS = (("val_accuracy", "val accuracy"),
                 ("test_accuracy", "test accuracy"),
                 ("params", "params"),
                 ("latency_ms_b1", "CPU ms, batch 1"),
                 ("speedup", "speedup vs teacher"))

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1180px; color: #1d1d1f; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
p.meta, figcaption, .note { color: #555; font-size: .9rem; }
table { border-collapse: collapse; font-size: .88rem; margin: .6rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .55rem; text-align: right; }
th { background: #f4f4f6; }
td.text, th.text { text-align: left; }
table.facts td:first-child { text-align: left; color: #555; white-space: nowrap; }
table.facts td { text-align: left; font-family: ui-monospace, monospace; font-size: .82rem; }
figure { margin: 1rem 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
nav a { margin-right: 1rem; }
"""


def render(sweeps: Sequence[SweepData], figures: Mapping[str, Sequence[Drawn]],
           overlay: Drawn | None) -> str:
    """The page for ``sweeps``: the overlay (several sweeps) first, then each sweep's facts,
    leaderboard and figures (``figures`` by sweep name)."""
    names = [d.name for d in sweeps]
    title = "kdtune report: " + ", ".join(names)
    parts = [f"<h1>{escape(title)}</h1>",
             f'<p class="meta">Written {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by kdtune '
             f"{escape(kdtune.__version__)} from the MLflow record alone.</p>"]
    if len(sweeps) > 1:
        parts.append("<nav>" + "".join(f'<a href="#{_anchor(n)}">{escape(n)}</a>'
                                       for n in names) + "</nav>")
    if overlay is not None:
        parts += ['<section id="comparison">', "<h2>Comparison</h2>", _figure(overlay),
                  "</section>"]
    for data in sweeps:
        parts.append(_sweep_section(data, figures.get(data.name, ())))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{escape(title)}</title>\n"
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _anchor(name: str) -> str:
    return "sweep-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _figure(drawn: Drawn) -> str:
    data = base64.b64encode(drawn.png).decode("ascii")
    return (f'<figure data-figure="{escape(drawn.key)}">'
            f"<h3>{escape(drawn.title)}</h3>"
            f'<img src="data:image/png;base64,{data}" width="{drawn.width}" '
            f'height="{drawn.height}" alt="{escape(drawn.title)}">'
            f"<figcaption>{escape(drawn.caption)}</figcaption></figure>")


def _sweep_section(data: SweepData, figures: Sequence[Drawn]) -> str:
    parts = [f'<section id="{_anchor(data.name)}">', f"<h2>Sweep {escape(data.name)}</h2>",
             "<h3>Facts</h3>", _facts(data)]
    what, rows = leaderboard(data, [m for m, _ in BOARD_COLUMNS])
    parts.append(f"<h3>Leaderboard</h3><p class=\"note\">{escape(what)}; ranked by "
                 f"{escape(data.metrics[0])} ({escape(data.modes[0])}); ± is the standard "
                 "deviation over seeds.</p>")
    parts.append(_board(rows, data, "runs" if len(data.finalists) else "trial"))
    parts += [_figure(f) for f in figures]
    if not figures:
        parts.append('<p class="note">No figure applies to what this sweep recorded (they need '
                     "finished trials with their metrics and per-epoch history).</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _facts(data: SweepData) -> str:
    parent = data.parent
    tags, params = parent.data.tags, parent.data.params
    start = parent.info.start_time
    recorded = _recorded_versions(tags)
    versions = ", ".join(f"{k} {v}" for k, v in recorded.items())
    if not recorded or set(recorded) == {"kdtune"}:
        here = package_versions()
        versions = (versions + "; " if versions else "") + "not recorded by the sweep; this " \
            "report's: " + ", ".join(f"{k} {here[k]}" for k in RECORDED_PACKAGES)
    teacher = data.teacher
    teacher_acc = ", ".join(part for part in (
        f"validation {teacher.val_accuracy:.4f}" if teacher.val_accuracy is not None else "",
        f"test {teacher.test_accuracy:.4f}" if teacher.test_accuracy is not None else "",
        f"{teacher.params:,.0f} params" if teacher.params is not None else "") if part)
    states = counts_by_status(data.trials)
    rows = [
        ("status", parent.info.status),
        ("space file", tags.get(TAG_SPACE, "not recorded")),
        ("space sha256", tags.get(TAG_SPACE_SHA, "not recorded")),
        ("objective", ", ".join(f"{m} ({d})" for m, d in zip(data.metrics, data.modes,
                                                              strict=True))),
        ("search", f"sampler {params.get('sampler', '?')}, scheduler "
                   f"{params.get('scheduler', '?')}, "
                   + (f"{tags[TAG_NUM_SAMPLES]} trials; " if tags.get(TAG_NUM_SAMPLES)
                      else "number of trials not recorded; ") +
                   f"searched: {params.get('searched') or '(nothing)'}"),
        ("teacher", teacher.checkpoint or "none"),
        ("teacher fingerprint", teacher.fingerprint or "not recorded"),
        ("teacher accuracy", teacher_acc or "not recorded"),
        ("versions", versions),
        ("git commit", tags.get(TAG_GIT_SHA, "not recorded")),
        ("started", _when(start)),
        ("training wall time", wall_time_text(data.wall_time)),
        ("trials by state", ", ".join(f"{k} {v}" for k, v in states.items()) or "none yet"),
        ("finalists", str(len(data.finalists)) if len(data.finalists) else "none yet"),
        ("MLflow parent run", parent.info.run_id),
    ]
    cells = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="facts">{cells}</table>'


def _recorded_versions(tags: Mapping[str, str]) -> dict[str, str]:
    try:
        recorded = json.loads(tags.get(TAG_VERSIONS, "{}"))
    except ValueError:
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    if not recorded and TAG_VERSION in tags:
        recorded = {"kdtune": tags[TAG_VERSION]}
    return {str(k): str(v) for k, v in recorded.items()}


def _when(ms: int | None) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, UTC):%Y-%m-%d %H:%M:%S UTC}" if ms else "-"


def duration(seconds: float) -> str:
    """``1 h 2 min 3 s``, ``2 min 3 s``, ``3 s``."""
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min {s} s" if hours else f"{m} min {s} s" if m else f"{s} s"


#: How the facts name a driver run's kind.
DRIVER_KINDS = {"earlier": "earlier runs"}


def wall_time_text(wall: WallTime | None) -> str:
    """The training wall time fact: the sum of the driver runs with their breakdown when
    there are several, saying when the sum is partial; without recorded driver runs, the span
    from the first run's start to the last run's end, said to be one."""
    if wall is None or wall.seconds is None:
        return "no run has ended yet"
    total = duration(wall.seconds)
    if not wall.spans:
        text = (f"{total}: the span from the first run's start to the last run's end (the sweep "
                "recorded no driver runs: a pause between its search and a resume, "
                "extension or finalize counts too)")
        return text + ("; still running" if wall.running else "")
    text = total
    if len(wall.spans) > 1:
        text += " (" + " + ".join(f"{DRIVER_KINDS.get(s.kind, s.kind)} {duration(s.seconds)}"
                                  for s in wall.spans) + "; idle time between them not counted)"
    notes = []
    for i, span in enumerate(wall.spans):
        if not span.open:
            continue
        kind = DRIVER_KINDS.get(span.kind, span.kind)
        if i == len(wall.spans) - 1 and wall.running:
            notes.append(f"the {kind} driver recorded no end: still running, or killed")
        else:
            notes.append(f"the {kind} driver was killed before recording its end")
    if notes:
        text += ("; partial: " + "; ".join(notes) + " (counted up to the end of the last run "
                 "it started)")
    return text


def _board(rows: Sequence[BoardRow], data: SweepData, heading: str) -> str:
    if not rows:
        return '<p class="note">No finished trial yet.</p>'
    head = f'<th class="text">{escape(heading)}</th><th class="text">settings</th>' + "".join(
        f"<th>{escape(h)}</th>" for _, h in BOARD_COLUMNS)
    body = []
    for row in rows:
        cells = "".join(f"<td>{escape(_cell(m, row.values.get(m)))}</td>"
                        for m, _ in BOARD_COLUMNS)
        body.append(f'<tr><td class="text">{escape(row.label)}</td>'
                    f'<td class="text">{escape(row.settings)}</td>{cells}</tr>')
    teacher = data.teacher
    if teacher.test_accuracy is not None or teacher.params is not None:
        values = {"val_accuracy": _value(teacher.val_accuracy),
                  "test_accuracy": _value(teacher.test_accuracy),
                  "params": _value(teacher.params)}
        cells = "".join(f"<td>{escape(_cell(m, values.get(m)))}</td>" for m, _ in BOARD_COLUMNS)
        body.append(f'<tr><td class="text">teacher</td><td class="text">'
                    f"{escape(teacher.fingerprint or '')}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _value(number: float | None) -> Value | None:
    return None if number is None else Value(number)


def _cell(metric: str, value: Value | None) -> str:
    if value is None or math.isnan(value.mean):
        return "-"
    if metric == "params":
        return f"{value.mean:,.0f}"
    if metric == "speedup":
        return f"{value.mean:.2f}x"
    if metric.startswith("latency"):
        return f"{value.mean:.3f}"
    text = f"{value.mean:.4f}"
    if value.sd is not None:
        text += f" ± {value.sd:.4f}"
    if value.n > 1:
        text += f" ({value.n} seeds)"
    return text

