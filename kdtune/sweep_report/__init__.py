"""``kdtune report``: one self-contained HTML page about one or more sweeps, read from MLflow.

For each sweep: its facts, a leaderboard (the finalists once ``kdtune finalize`` has made
them, else the best trials by validation), accuracy against latency and size with the
Pareto front and the teacher, accuracy against alpha and over alpha × T when the sweep varied
them, learning curves with ASHA's rungs, and parameter importances when they are supplied
(:mod:`kdtune.sweep_report.importances`). With several sweeps, their accuracy-against-alpha
curves are overlaid (an alpha study). Every figure is also logged as a PNG to its sweep's
parent run under ``report/``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdtune.errors import KdtuneError

if TYPE_CHECKING:
    from kdtune.sweep_report.figures import Drawn
    from kdtune.tracking import Tracker

#: Where the figures go among a sweep's parent run's artifacts.
ARTIFACT_DIR = "report"
REPORTS_DIRNAME = "reports"


@dataclass(frozen=True)
class Written:
    """What :func:`write_report` wrote: the page and the figures' file names."""

    path: Path
    figures: tuple[str, ...]
    artifact_dir: str = ARTIFACT_DIR


def default_out(names: Sequence[str]) -> Path:
    """``./kdtune-runs/reports/<name>[+<name2>...].html``."""
    from kdtune.mlflow_store import default_store

    return default_store() / REPORTS_DIRNAME / ("+".join(names) + ".html")


def write_report(names: Sequence[str], *, tracking_uri: str, out: str | Path | None = None,
                 importances: Mapping[str, Mapping[str, float]] | None = None) -> Written:
    """Write the report of sweeps ``names`` to ``out`` (default :func:`default_out`) and log
    its figures to the sweeps' parent runs. ``importances`` (by sweep name) replaces what
    :func:`~kdtune.sweep_report.importances.parameter_importances` returns."""
    from kdtune.mlflow_store import require_store
    from kdtune.sweep_report.figures import alpha_overlay, sweep_figures
    from kdtune.sweep_report.importances import parameter_importances
    from kdtune.sweep_report.page import render
    from kdtune.sweep_report.sweep_data import load_sweep
    from kdtune.tracking import Tracker

    names = list(names)
    if not names:
        raise KdtuneError("name at least one sweep to report on")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise KdtuneError(f"sweep {repeated[0]!r} is named twice; name each sweep once")
    target = Path(out).expanduser() if out is not None else default_out(names)
    if target.suffix.lower() not in (".html", ".htm"):
        raise KdtuneError(f"--out {target}: the report is an HTML file; give a name ending in "
                          ".html")
    if target.is_dir():
        raise KdtuneError(f"--out {target} is a folder; give the file to write, e.g. "
                          f"{target / 'report.html'}")
    require_store(tracking_uri)
    tracker = Tracker(tracking_uri)
    sweeps = [load_sweep(tracker, n) for n in names]
    given = dict(importances or {})
    figures: dict[str, list[Drawn]] = {}
    for data in sweeps:
        importance = given.get(data.name) or parameter_importances(tracker, data.name)
        figures[data.name] = sweep_figures(data, importance)
    overlay = alpha_overlay(sweeps) if len(sweeps) > 1 else None
    html = render(sweeps, figures, overlay)
    for data in sweeps:
        _log_figures(tracker, data.parent.info.run_id,
                     [*figures[data.name], *([overlay] if overlay else [])])
    _write_atomically(target, html)
    keys = [f"{d.key}.png" for n in names for d in figures[n]]
    return Written(target.resolve(), tuple([*keys, *([f"{overlay.key}.png"] if overlay else [])]))


def _log_figures(tracker: Tracker, run_id: str, figures: Sequence[Drawn]) -> None:
    if not figures:
        return
    with tempfile.TemporaryDirectory(prefix="kdtune-report-") as folder:
        for drawn in figures:
            (Path(folder) / f"{drawn.key}.png").write_bytes(drawn.png)
        tracker.client.log_artifacts(run_id, folder, ARTIFACT_DIR)


def _write_atomically(target: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``target``, then rename it into place."""
    import uuid

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
