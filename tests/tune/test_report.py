"""`kdtune report`: real sweeps (a small alpha × T grid with 2 seeds; a random search of
alpha × T extended after a pause and finalized; the shared ASHA sweep), the page opened from
disk in a real headless Chromium (no console error, every figure a non-blank PNG of the
expected size), the figures logged to the parent runs, the facts (trials planned, training
wall time), runs by their readable ids, what the alpha figures plot, the alpha × T figure on
and off a grid, seeds' spread against an independent retraining, finalists on the
leaderboard, and bad input."""

from __future__ import annotations

import base64
import html as html_lib
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from kdtune.cli import main
from kdtune.runs import driver_run_seconds, run_config
from kdtune.sweep_report import write_report
from kdtune.sweep_report.figures import (
    HEIGHT,
    WIDTH,
    accuracy_limits,
    draw_alpha_by_temperature,
    values_note,
)
from kdtune.sweep_report.page import duration
from kdtune.sweep_report.sweep_data import (
    BINS,
    MIN_BINNED_TRIALS,
    SweepData,
    Value,
    alpha_series,
    alpha_temperature,
    grid_axis,
    leaderboard,
    load_sweep,
    on_grid,
)
from kdtune.sweep_results import TeacherFacts
from kdtune.tracking import Tracker
from kdtune.vocabulary import (
    TAG_DRIVER_RUNS,
    TAG_FINALIST,
    TAG_NUM_SAMPLES,
    TAG_OUT_OF_TOP,
    TAG_READABLE_ID,
    TAG_ROLE,
    TAG_STAGE,
)

from .browser import INSTALL, check_page, find_chromium, headless_chromium
from .conftest import BASE_SPACE, SweepRecord, new_store, run_in_process, write_space

ALPHAS = [0.0, 0.5, 1.0]
#: Seconds between the search of ``alphas_ext`` and its extension: idle, not training.
PAUSE_S = 3
#: A Ray trial id (``6c5ea_00008``): the report names runs by their readable ids instead.
RAY_ID = re.compile(r"\b[0-9a-f]{5}_[0-9]{5}\b")


@pytest.fixture(scope="module")
def alpha_sweeps(ray_session: None, teacher_path: Path, mlflow_template: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepRecord, SweepRecord]:
    """In one store, from the session teacher, vanilla KD, 2 epochs: ``alphas`` (a grid:
    alpha {0, 0.5, 1} × T {2, 4}, seeds 0 and 1) and ``alphas_ext`` (random search, one seed,
    alpha in [0.1, 0.9] × T {2, 4}: 3 trials; after a pause, ``kdtune resume alphas_ext
    --num-samples 5`` adds 2; then ``kdtune finalize alphas_ext --top 1 --seeds 2``)."""
    root = tmp_path_factory.mktemp("alpha-sweeps")
    store = new_store(root / "store", mlflow_template)
    fixed = {**BASE_SPACE["fixed"], "epochs": 2, "method": "vanilla", "hidden": [16]}
    common = {"teacher": {"path": str(teacher_path)}, "scheduler": {"type": "none"}}
    grid = write_space(root, "alphas.yaml", name="alphas", **common,
                       search={"sampler": "grid", "max_concurrent": 2, "seed": 0},
                       fixed={**fixed, "seeds": [0, 1]},
                       parameters={"alpha": {"type": "categorical", "choices": ALPHAS},
                                   "temperature": {"type": "categorical", "choices": [2, 4]}})
    ext = write_space(root, "ext.yaml", name="alphas_ext", **common,
                      search={"sampler": "random", "num_samples": 3, "max_concurrent": 2,
                              "seed": 0},
                      fixed=fixed,
                      parameters={"alpha": {"type": "float", "low": 0.1, "high": 0.9},
                                  "temperature": {"type": "categorical", "choices": [2, 4]}})
    records = run_in_process(grid, store), run_in_process(ext, store)
    for record in records:
        assert record.outcome.finished, record.output
    flags = ["--mlflow-uri", records[1].uri, "--storage", str(records[1].storage)]
    time.sleep(PAUSE_S)
    assert main(["resume", "alphas_ext", "--num-samples", "5", *flags]) == 0
    assert main(["finalize", "alphas_ext", "--top", "1", "--seeds", "2", *flags]) == 0
    return records


@pytest.fixture(scope="module")
def chromium() -> Any:
    found = find_chromium()
    if found is None:
        pytest.skip(f"Chromium and chromedriver are not installed ({INSTALL}; .ci/run installs "
                    "them where apt-get works)")
    with headless_chromium(*found) as browser:
        yield browser


def section(html: str, name: str) -> str:
    """The part of the page about sweep ``name``."""
    start = html.index(f'<section id="sweep-{name}">')
    return html[start:html.index("</section>", start)]


def fact_rows(html: str) -> dict[str, str]:
    """The first facts table of ``html``: fact -> text."""
    table = re.search(r'<table class="facts">(.*?)</table>', html, re.S)[1]
    return {html_lib.unescape(k): html_lib.unescape(v)
            for k, v in re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", table)}


def captions(html: str) -> dict[str, str]:
    """Figure key -> caption (the first figure of each key in ``html``)."""
    found: dict[str, str] = {}
    for key, caption in re.findall(r'<figure data-figure="([^"]+)">.*?<figcaption>(.*?)'
                                   r"</figcaption>", html, re.S):
        found.setdefault(key, html_lib.unescape(caption))
    return found


def board_labels(html: str) -> list[str]:
    """The first column of the leaderboard in ``html`` (without the teacher's row)."""
    board = html[html.index("<h3>Leaderboard"):]
    board = board[:board.index("</table>")]
    return [html_lib.unescape(v) for v in re.findall(r'<tr><td class="text">(.*?)</td>', board)
            if v != "teacher"]


def ms(stamp: Any) -> int:
    return int(stamp.value // 1_000_000)


def embedded_pngs(html: str) -> dict[str, bytes]:
    return {key: base64.b64decode(data) for key, data in
            re.findall(r'<figure data-figure="([^"]+)">.*?base64,([^"]+)"', html, re.S)}


def assert_renders(chromium: Any, page: Path, figures: list[str]) -> None:
    """The page loads with no console error, and shows exactly ``figures``, each a non-blank
    image of the size the report draws."""
    check = check_page(chromium, page)
    assert check.title.startswith("kdtune report")
    assert check.errors == [], check.errors
    assert [img["figure"] for img in check.images] == figures
    for img in check.images:
        assert img["complete"], img
        assert (img["naturalWidth"], img["naturalHeight"]) == (WIDTH, HEIGHT), img
        assert (img["width"], img["height"]) == (WIDTH, HEIGHT), img
        assert img["inked"] > 0.02 * WIDTH * HEIGHT, img  # drawn, not a blank canvas
    html = page.read_text()
    assert not re.search(r"https?://|<script|<link|@import", html)  # nothing to fetch


def test_the_browser_check_catches_a_broken_page(chromium: Any, tmp_path: Path) -> None:
    """The check above can fail: a broken image and a console error are both seen."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><title>kdtune report: broken</title></head>'
                    '<body><figure data-figure="x"><img src="data:image/png;base64,iVBORw0K" '
                    'width="10" height="10"></figure><script>console.error("boom")</script>'
                    "</body></html>")
    check = check_page(chromium, page)
    assert [e["message"] for e in check.errors if "boom" in e["message"]]
    assert check.images[0]["naturalWidth"] == 0 and check.images[0]["inked"] == 0


def test_alpha_study_report_in_a_real_browser(alpha_sweeps: tuple[SweepRecord, SweepRecord],
                                              chromium: Any, tmp_path: Path) -> None:
    grid, short = alpha_sweeps
    page = tmp_path / "study.html"
    done = write_report(["alphas", "alphas_ext"], out=page, tracking_uri=grid.uri,
                        importances={"alphas": {"alpha": 0.8, "temperature": 0.2}})
    assert done.path == page.resolve()
    expected = ["alpha_overlay",
                "accuracy_front", "accuracy_vs_alpha", "alpha_by_temperature",
                "learning_curves", "parameter_importances",
                "accuracy_front", "accuracy_vs_alpha", "alpha_by_temperature",
                "learning_curves",
                "parameter_importances"]  # the second sweep's, from its Optuna study
    assert_renders(chromium, page, expected)

    # the same PNGs are on each sweep's parent run, under report/
    html = page.read_text()
    pngs = embedded_pngs(html)
    tracker = Tracker(grid.uri)
    for record, keys in ((grid, expected[1:6]), (short, expected[6:])):
        parent = tracker.sweep_run(record.name).info.run_id
        logged = {Path(f.path).name for f in tracker.client.list_artifacts(parent, "report")}
        assert logged == {f"{k}.png" for k in [*keys, "alpha_overlay"]}
        overlay = tracker.client.download_artifacts(parent, "report/alpha_overlay.png",
                                                    str(tmp_path / record.name))
        assert Path(overlay).read_bytes() == pngs["alpha_overlay"]

    # facts of the sweep are on the page
    parent = tracker.sweep_run("alphas")
    for fact in (parent.data.tags["kdtune.space_sha256"], parent.data.tags["kdtune.space_file"],
                 parent.data.tags["kdtune.teacher_fingerprint"], "FINISHED 6", "torch ",
                 "optuna ", "mlflow ", "ray "):
        assert fact in html, fact


def test_leaderboard_spread_is_the_seeds_spread(alpha_sweeps: tuple[SweepRecord, SweepRecord],
                                                teacher_path: Path) -> None:
    """The ± of a two-seed trial is the sd of the two seeds' accuracies, retrained here."""
    from kdtune.trainer import train

    grid, _ = alpha_sweeps
    data = load_sweep(Tracker(grid.uri), "alphas")
    what, rows = leaderboard(data, ["val_accuracy", "test_accuracy"])
    assert "no finalists" in what and len(rows) == 6
    assert [r.values["val_accuracy"].mean for r in rows] == sorted(
        (r.values["val_accuracy"].mean for r in rows), reverse=True)
    top = rows[0]
    run = data.trials[data.trials[f"tags.{TAG_READABLE_ID}"] == top.label].iloc[0]
    config = run_config(run)
    assert config.teacher == str(teacher_path) and config.alpha in ALPHAS
    per_seed = [train(config.replace(seed=seed), measure_latency=False).metrics
                for seed in (0, 1)]
    assert top.values["test_accuracy"] is None  # search trials never read the test set
    for metric in ("val_accuracy",):
        value = top.values[metric]
        assert value.n == 2
        assert value.mean == pytest.approx(statistics.fmean(m[metric] for m in per_seed))
        assert value.sd == pytest.approx(statistics.stdev(m[metric] for m in per_seed))


def test_report_of_an_asha_sweep_from_the_cli(asha_sweep: SweepRecord, chromium: Any,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "asha.html"
    assert main(["report", "asha", "--out", str(page), "--mlflow-uri", asha_sweep.uri]) == 0
    assert str(page) in capsys.readouterr().out
    html = page.read_text()
    keys = list(embedded_pngs(html))
    assert keys[0] == "accuracy_front" and "learning_curves" in keys
    assert "parameter_importances" in keys  # read from the sweep's Optuna study
    assert_renders(chromium, page, keys)
    runs = asha_sweep.tracker().trial_runs("asha")
    killed = int((runs["status"] == "KILLED").sum())
    assert killed >= 1 and f"{killed} stopped early by ASHA" in html
    assert "sampler tpe, scheduler asha, 8 trials;" in fact_rows(html)["search"]
    states = ", ".join(f"{s} {n}" for s, n in sorted(runs["status"].value_counts().items()))
    assert states in html


def test_finalists_lead_the_leaderboard(tmp_path: Path, mlflow_template: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Child runs tagged kdtune.stage=final (what `kdtune finalize` writes) replace the best
    trials on the leaderboard, one row per configuration with mean ± sd over its runs."""
    store = new_store(tmp_path / "store", mlflow_template)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    tracker = Tracker(uri)
    parent = tracker.start_sweep("finals", params={"objective.metrics": "val_accuracy",
                                                   "objective.modes": "max",
                                                   "searched": "method,alpha"})
    trial = tracker.start_trial(parent, "t1", params={"method": "vanilla", "alpha": 0.3})
    tracker.end_trial(trial, "FINISHED", metrics={"val_accuracy": 0.91, "test_accuracy": 0.9})
    # a trial an earlier finalize chose, out of the latest one's top: its runs are neither
    # finalists nor trials
    dropped = tracker.start_trial(parent, "t2", params={"method": "vanilla", "alpha": 0.6})
    tracker.end_trial(dropped, "FINISHED", metrics={"val_accuracy": 0.89})
    for seed in (0, 1):
        run = tracker.start_trial(parent, f"final-t2-{seed}",
                                  params={"method": "vanilla", "alpha": 0.6, "seed": seed},
                                  tags={"kdtune.stage": "final", "kdtune.role": "kd",
                                        "kdtune.finalist": "t2", TAG_OUT_OF_TOP: "true"})
        tracker.end_trial(run, "FINISHED", metrics={"val_accuracy": 0.99,
                                                    "test_accuracy": 0.99})
    tests = {"vanilla": [0.95, 0.93, 0.94], "none": [0.80, 0.84, 0.82]}
    for method, accs in tests.items():
        for seed, acc in enumerate(accs):
            role = "kd" if method == "vanilla" else "student_alone"
            run = tracker.start_trial(parent, f"final-{method}-{seed}",
                                      params={"method": method, "alpha": 0.3, "seed": seed},
                                      tags={"kdtune.stage": "final", "kdtune.role": role,
                                            "kdtune.finalist": "t1"})
            tracker.end_trial(run, "FINISHED", metrics={"val_accuracy": acc - 0.01,
                                                        "test_accuracy": acc})
    page = tmp_path / "finals.html"
    assert main(["report", "finals", "--out", str(page), "--mlflow-uri", uri]) == 0
    html = page.read_text()
    assert "finalists (the chosen configurations retrained on fresh seeds)" in html
    board = html[html.index("<h3>Leaderboard"):]
    vanilla, none = (f"{statistics.fmean(accs):.4f} ± {statistics.stdev(accs):.4f}"
                     for accs in tests.values())
    assert vanilla in board and none not in board  # the student-alone baseline is no finalist
    assert "(3 seeds)" in board and ">t1<" not in board  # the trial is not a finalist
    assert "0.9900" not in board  # nor are the runs out of the top
    facts = fact_rows(html)
    assert facts["trials by state"] == "FINISHED 2" and facts["finalists"] == "3"


def test_bad_input_is_one_line_and_writes_nothing(asha_sweep: SweepRecord, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    cases = [(["ahsa"], "did you mean 'asha'"),
             (["asha", "asha"], "named twice"),
             (["asha", "--out", str(out / "report.pdf")], ".html")]
    for argv, expected in cases:
        flags = [] if "--out" in argv else ["--out", str(out / "r.html")]
        assert main(["report", *argv, *flags, "--mlflow-uri", asha_sweep.uri]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kdtune report: error: "), err
        assert expected in lines[0] and "Traceback" not in err
    assert not out.exists()


def test_test_accuracy_against_alpha_comes_from_the_finalists() -> None:
    """Search trials never read the test set: the test panel of the alpha figures shows the
    test accuracy of the configurations ``kdtune finalize`` retrained (mean ± sd over their
    fresh seeds), and nothing for the others."""
    import pandas as pd

    def run(run_id: str, trial_id: str, alpha: float, **metrics: float) -> dict[str, Any]:
        return {"run_id": run_id, "trial_id": trial_id, "status": "FINISHED",
                "params.method": "vanilla", "params.alpha": str(alpha),
                "params.temperature": "4.0", "params.hidden": "[8]",
                **{f"metrics.{k}": v for k, v in metrics.items()}}

    trials = pd.DataFrame([run(f"r{a}", f"t{a}", a, val_accuracy=0.5 + a / 10)
                           for a in (0.1, 0.5, 0.9)])
    finalists = pd.DataFrame([{**run(f"f{seed}", f"t0.5-final-{seed}", 0.5, test_accuracy=acc),
                               f"tags.{TAG_FINALIST}": "t0.5"}
                              for seed, acc in ((1, 0.80), (2, 0.90))])
    data = SweepData(name="s", parent=None, trials=trials, finalists=finalists,
                     metrics=["val_accuracy"], modes=["max"], searched=["alpha"],
                     teacher=TeacherFacts(None, None, None, None, None, None))
    (series,) = alpha_series(data, ["val_accuracy", "test_accuracy"])
    points = dict(series.points)
    assert points[0.5]["test_accuracy"] == Value(statistics.fmean([0.80, 0.90]),
                                                 statistics.stdev([0.80, 0.90]), 2)
    assert points[0.1]["test_accuracy"] is None and points[0.9]["test_accuracy"] is None
    assert points[0.9]["val_accuracy"] == Value(0.59, None, 1)


# -- facts: trials planned, training wall time ------------------------------------------------
def test_facts_of_a_sweep_extended_after_a_pause_and_finalized(
        alpha_sweeps: tuple[SweepRecord, SweepRecord], tmp_path: Path) -> None:
    """The trials planned are the extended total; the wall time is the sum of the three
    driver runs (search, extend, finalize), not the span that holds the pause between them."""
    _, ext = alpha_sweeps
    page = tmp_path / "ext.html"
    assert main(["report", "alphas_ext", "--out", str(page), "--mlflow-uri", ext.uri]) == 0
    facts = fact_rows(page.read_text())
    parent = ext.tracker().sweep_run("alphas_ext")
    assert parent.data.tags[TAG_NUM_SAMPLES] == "5"
    assert "sampler random, scheduler none, 5 trials;" in facts["search"]
    runs = json.loads(parent.data.tags[TAG_DRIVER_RUNS])
    assert [r["kind"] for r in runs] == ["search", "extend", "finalize"]
    search, extend, finalize = (driver_run_seconds(r) for r in runs)
    assert facts["training wall time"] == (
        f"{duration(search + extend + finalize)} (search {duration(search)} + extend "
        f"{duration(extend)} + finalize {duration(finalize)}; idle time between them not "
        "counted)")
    assert (runs[1]["start"] - runs[0]["end"]) / 1000 >= PAUSE_S  # the pause, not counted
    span = (runs[-1]["end"] - runs[0]["start"]) / 1000
    assert not facts["training wall time"].startswith(duration(span))


def test_training_wall_time_of_a_killed_driver_and_of_an_older_sweep(
        alpha_sweeps: tuple[SweepRecord, SweepRecord], tmp_path: Path) -> None:
    """On the grid sweep's parent run, the driver runs as a killed search and a resume that
    ended would have recorded them, as a search still running, and none (an older kdtune):
    a driver run without an end counts up to the end of the last run it started, and the
    report says the figure is partial, or a span."""
    grid, _ = alpha_sweeps
    tracker = grid.tracker()
    parent = tracker.sweep_run("alphas")
    run_id, recorded = parent.info.run_id, parent.data.tags[TAG_DRIVER_RUNS]
    (search,) = json.loads(recorded)
    trials = tracker.trial_runs("alphas")
    times = sorted((ms(s), ms(e)) for s, e in zip(trials["start_time"], trials["end_time"],
                                                  strict=True))
    assert len(times) == 6 and times[0][0] >= search["start"] and times[-1][1] <= search["end"]
    cut = times[4][0]  # killed after four trials started; a resume ran the other two
    before = (min(max(e for _, e in times[:4]), cut) - search["start"]) / 1000
    after = (search["end"] - cut) / 1000
    up_to_now = (max(e for _, e in times) - search["start"]) / 1000
    span = (max(e for _, e in times) - times[0][0]) / 1000
    cases = [
        ([{"kind": "search", "start": search["start"], "end": None},
          {"kind": "resume", "start": cut, "end": search["end"]}], "FINISHED",
         f"{duration(before + after)} (search {duration(before)} + resume {duration(after)}; "
         "idle time between them not counted); partial: the search driver was killed before "
         "recording its end (counted up to the end of the last run it started)"),
        ([{"kind": "search", "start": search["start"], "end": None}], "RUNNING",
         f"{duration(up_to_now)}; partial: the search driver recorded no end: still running, "
         "or killed (counted up to the end of the last run it started)"),
        (None, "FINISHED",
         f"{duration(span)}: the span from the first run's start to the last run's end (the "
         "sweep recorded no driver runs: a pause between its search and a resume, extension "
         "or finalize counts too)"),
    ]
    try:
        for i, (runs, status, expected) in enumerate(cases):
            if runs is None:
                tracker.client.delete_tag(run_id, TAG_DRIVER_RUNS)
            else:
                tracker.client.set_tag(run_id, TAG_DRIVER_RUNS, json.dumps(runs))
            tracker.client.update_run(run_id, status=status)
            page = tmp_path / f"case{i}.html"
            assert main(["report", "alphas", "--out", str(page), "--mlflow-uri", grid.uri]) == 0
            assert fact_rows(page.read_text())["training wall time"] == expected, runs
    finally:
        tracker.client.set_tag(run_id, TAG_DRIVER_RUNS, recorded)
        tracker.client.set_terminated(run_id, parent.info.status, parent.info.end_time)


# -- the alpha × T figure --------------------------------------------------------------------
def test_alpha_temperature_on_a_grid_and_off_it(alpha_sweeps: tuple[SweepRecord, SweepRecord],
                                                tmp_path: Path) -> None:
    """The grid sweep's alpha × T figure is a heat map labelled by the grid's values; the
    random search's (alpha drawn from a range) shows its trials as points where they are."""
    grid, _ = alpha_sweeps
    page = tmp_path / "both.html"
    assert main(["report", "alphas", "alphas_ext", "--out", str(page),
                 "--mlflow-uri", grid.uri]) == 0
    html = page.read_text()
    on = captions(section(html, "alphas"))["alpha_by_temperature"]
    off = captions(section(html, "alphas_ext"))["alpha_by_temperature"]
    assert "vanilla: the mean of its 6 trials per (alpha, T) of the grid." in on
    assert "vanilla: each of its 5 trials as a point (its values are not on a grid" in off

    tracker = Tracker(grid.uri)
    (heat,) = alpha_temperature(load_sweep(tracker, "alphas"))
    assert (heat.kind, heat.alphas, heat.temperatures) == ("grid", ["0", "0.5", "1"], ["2", "4"])
    ax, bar = draw_alpha_by_temperature([heat]).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.5", "1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "4"]
    assert 0 <= bar.get_ylim()[0] < bar.get_ylim()[1] <= 1

    (points,) = alpha_temperature(load_sweep(tracker, "alphas_ext"))
    trials = tracker.trial_runs("alphas_ext")
    assert points.kind == "points" and len(points.scatter) == len(trials) == 5
    assert len({a for a, _, _ in points.scatter}) == 5  # drawn from a range: no grid
    ax, bar = draw_alpha_by_temperature([points]).axes
    assert [tuple(xy) for xy in ax.collections[0].get_offsets()] == \
        [(a, t) for a, t, _ in points.scatter]
    assert sorted(ax.get_yticks()) == sorted({t for _, t, _ in points.scatter})
    assert 0 <= bar.get_ylim()[0] < bar.get_ylim()[1] <= 1


def synthetic_sweep(trials: list[tuple[float, float, float]]) -> SweepData:
    """A sweep of vanilla trials (alpha, T, validation accuracy), as load_sweep reads one."""
    import pandas as pd

    rows = pd.DataFrame([{"run_id": f"r{i}", "trial_id": f"t{i}", "status": "FINISHED",
                          "params.method": "vanilla", "params.alpha": str(a),
                          "params.temperature": str(t), "metrics.val_accuracy": v}
                         for i, (a, t, v) in enumerate(trials)])
    return SweepData(name="s", parent=None, trials=rows, finalists=rows.iloc[:0],
                     metrics=["val_accuracy"], modes=["max"], searched=["alpha"],
                     teacher=TeacherFacts(None, None, None, None, None, None))


def test_the_colour_scale_of_accuracy_stays_within_0_and_1() -> None:
    """Trials of one accuracy (1.0 on an easy task, or 0.0) give a scale matplotlib would
    widen by 10% either side; the report's stays within [0, 1] and spans the values."""
    for values in ([1.0] * 4, [0.0] * 4, [0.99, 1.0, 1.0, 0.995], [0.4, 0.9, 0.6, 0.7]):
        trials = [(a, t, v) for (a, t), v in zip([(0.2, 2), (0.5, 2), (0.2, 4), (0.5, 4)] * 2,
                                                  values * 2, strict=True)]
        (grid,) = alpha_temperature(synthetic_sweep(trials))
        low, high = draw_alpha_by_temperature([grid]).axes[-1].get_ylim()
        assert 0 <= low <= min(values) <= max(values) <= high <= 1 and high - low >= 0.02, \
            values
    assert accuracy_limits([1.0]) == (0.98, 1.0)
    assert accuracy_limits([0.0]) == (0.0, 0.02)
    assert accuracy_limits([0.5]) == pytest.approx((0.49, 0.51))
    assert accuracy_limits([0.3, 0.8]) == (0.3, 0.8)


def test_alpha_off_a_grid_is_binned_when_there_are_enough_trials() -> None:
    alphas = [0.1 + 0.8 * i / (MIN_BINNED_TRIALS + 5) for i in range(MIN_BINNED_TRIALS + 6)]
    accuracy = [0.5 + a / 4 for a in alphas]
    trials = [(a, (2, 4)[i % 2], v) for i, (a, v) in enumerate(zip(alphas, accuracy,
                                                                     strict=True))]
    assert on_grid([t for _, t, _ in trials]) and not on_grid(alphas)
    assert on_grid([0, 0.5, 1, 0, 0.5, 1]) and not on_grid([0, 0.5, 1, 0])
    (grid,) = alpha_temperature(synthetic_sweep(trials))
    assert (grid.kind, grid.binned, grid.temperatures) == ("bins", ["alpha"], ["2", "4"])
    width = 0.8 / BINS
    assert grid.alphas == [f"{0.1 + i * width:.3g}–{0.1 + (i + 1) * width:.3g}"
                           for i in range(BINS)]
    for yi, t in enumerate((2, 4)):
        for xi in range(BINS):
            mine = [v for a, tt, v in trials if tt == t
                    and min(int((a - 0.1) / width + 1e-9), BINS - 1) == xi]
            assert grid.counts[yi][xi] == len(mine)
            assert grid.values[yi][xi] == pytest.approx(statistics.fmean(mine))
    assert sum(map(sum, grid.counts)) == len(trials)
    axis = grid_axis([0.3, 0.7, 0.3, 0.7])
    assert (axis.labels, axis.cells, axis.binned) == (["0.3", "0.7"], [0, 1, 0, 1], False)
    # too few trials to bin: points
    (few,) = alpha_temperature(synthetic_sweep(trials[:MIN_BINNED_TRIALS - 1]))
    assert few.kind == "points" and few.scatter == trials[:MIN_BINNED_TRIALS - 1]


# -- what the alpha figures plot -------------------------------------------------------------
def test_the_alpha_figures_say_what_they_plot(alpha_sweeps: tuple[SweepRecord, SweepRecord],
                                              tmp_path: Path) -> None:
    """Two-seed trials (mean ± sd), single-seed trials (their values) and the finalist's
    test accuracy (mean ± sd over its fresh seeds), each said of its own sweep and panel."""
    grid, _ = alpha_sweeps
    page = tmp_path / "both.html"
    assert main(["report", "alphas", "alphas_ext", "--out", str(page),
                 "--mlflow-uri", grid.uri]) == 0
    html = page.read_text()
    two_seeds = "validation: mean ± sd over 2 seeds per trial"
    one_seed = "validation: one value per trial (single-seed runs, no spread)"
    finalist = ("test: mean ± sd over 2 fresh seeds per configuration `kdtune finalize` "
                "retrained")
    overlay = captions(html)["alpha_overlay"]
    assert f"alphas: {two_seeds}. alphas_ext: {one_seed}; {finalist}." in overlay
    assert captions(section(html, "alphas"))["accuracy_vs_alpha"] == (
        f"Finished trials of the methods that read alpha. V{two_seeds[1:]}. Lines join "
        "trials that differ in alpha alone.")
    assert f"V{one_seed[1:]}; {finalist}." in captions(section(html, "alphas_ext"))[
        "accuracy_vs_alpha"]


def test_the_note_of_what_a_panel_plots() -> None:
    one, two, three = Value(0.9), Value(0.9, 0.01, 2), Value(0.8, 0.02, 3)
    assert values_note("val_accuracy", [one, one]) == \
        "validation: one value per trial (single-seed runs, no spread)"
    assert values_note("val_accuracy", [three, three]) == \
        "validation: mean ± sd over 3 seeds per trial"
    assert values_note("val_accuracy", [one, two, three]) == \
        ("validation: mean ± sd over 2–3 seeds where a trial has several, else its single "
         "run's value")
    assert values_note("test_accuracy", [three]) == \
        "test: mean ± sd over 3 fresh seeds per configuration `kdtune finalize` retrained"


# -- readable ids ----------------------------------------------------------------------------
def test_runs_are_named_by_their_readable_ids(alpha_sweeps: tuple[SweepRecord, SweepRecord],
                                              tmp_path: Path) -> None:
    """Leaderboards, figure captions and the finalists' test accuracy on the alpha figure use
    the readable ids (``NAME#n``, ``NAME#n/seedS``), never Ray's trial ids."""
    grid, _ = alpha_sweeps
    page = tmp_path / "both.html"
    assert main(["report", "alphas", "alphas_ext", "--out", str(page),
                 "--mlflow-uri", grid.uri]) == 0
    html = page.read_text()
    text = re.sub(r"base64,[^\"]+", "", html)
    assert not RAY_ID.search(text), RAY_ID.search(text)
    tracker = Tracker(grid.uri)

    trials = tracker.trial_runs("alphas")
    ids = trials[f"tags.{TAG_READABLE_ID}"]
    assert all(re.fullmatch(r"alphas#[0-9]+", i) for i in ids)
    labels = board_labels(section(html, "alphas"))
    assert sorted(labels) == sorted(ids)
    best = ids[trials["metrics.val_accuracy"].idxmax()]
    assert labels[0] == best
    assert captions(section(html, "alphas"))["learning_curves"].endswith(
        f"; bold: the best, {best}.")
    front = captions(section(html, "alphas"))["accuracy_front"]
    most = set(ids[trials["metrics.val_accuracy"] == trials["metrics.val_accuracy"].max()])
    assert any(f"{i}," in front or f"{i};" in front or f"{i})" in front for i in most)

    finals = tracker.final_runs("alphas_ext")
    kd = finals[finals[f"tags.{TAG_ROLE}"] == "kd"]
    (chosen,) = set(kd[f"tags.{TAG_FINALIST}"])
    assert re.fullmatch(r"alphas_ext#[0-9]+", chosen)
    assert board_labels(section(html, "alphas_ext")) == [
        ", ".join(f"{chosen}/seed{s}" for s in (1, 2))]
    assert set(finals[f"tags.{TAG_STAGE}"]) == {"final"}

    # the chosen trial's point on the test panel is its finalist runs' test accuracy
    data = load_sweep(tracker, "alphas_ext")
    trial = data.trials[data.trials[f"tags.{TAG_READABLE_ID}"] == chosen].iloc[0]
    alpha = float(trial["params.alpha"])
    tests = [(a, v["test_accuracy"]) for s in alpha_series(data, ["test_accuracy"])
             for a, v in s.points if v["test_accuracy"] is not None]
    accs = list(kd["metrics.test_accuracy"])
    assert tests == [(alpha, Value(statistics.fmean(accs), statistics.stdev(accs), 2))]
