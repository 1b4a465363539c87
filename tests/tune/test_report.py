"""`kdtune report`: real sweeps (two small alpha × T grids with 2 seeds, and the shared ASHA
sweep), the page opened from disk in a real headless Chromium (no console error, every
figure a non-blank PNG of the expected size), the figures logged to the parent runs, seeds'
spread against an independent retraining, finalists on the leaderboard, and bad input."""

from __future__ import annotations

import base64
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from kdtune.cli import main
from kdtune.config import TrainConfig
from kdtune.sweep_report import write_report
from kdtune.sweep_report.figures import HEIGHT, WIDTH
from kdtune.sweep_report.sweep_data import leaderboard, load_sweep
from kdtune.tracking import Tracker, config_from_run

from .browser import INSTALL, check_page, find_chromium, headless_chromium
from .conftest import BASE_SPACE, SweepRecord, new_store, run_in_process, write_space

ALPHAS = [0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def alpha_sweeps(ray_session: None, teacher_path: Path, mlflow_template: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepRecord, SweepRecord]:
    """In one store: ``alphas`` (vanilla, alpha {0, 0.5, 1} × T {2, 4}, seeds 0 and 1) and
    ``alphas_short`` (alpha {0, 1}, one seed), both from the session teacher, 2 epochs."""
    root = tmp_path_factory.mktemp("alpha-sweeps")
    store = new_store(root / "store", mlflow_template)
    fixed = {**BASE_SPACE["fixed"], "epochs": 2, "method": "vanilla", "hidden": [16]}
    common = {"teacher": {"path": str(teacher_path)}, "scheduler": {"type": "none"},
              "search": {"sampler": "grid", "max_concurrent": 2, "seed": 0}}
    grid = write_space(root, "alphas.yaml", name="alphas", **common,
                       fixed={**fixed, "seeds": [0, 1]},
                       parameters={"alpha": {"type": "categorical", "choices": ALPHAS},
                                   "temperature": {"type": "categorical", "choices": [2, 4]}})
    short = write_space(root, "short.yaml", name="alphas_short", **common,
                        fixed={**fixed, "temperature": 2},
                        parameters={"alpha": {"type": "categorical", "choices": [0.0, 1.0]}})
    records = run_in_process(grid, store), run_in_process(short, store)
    for record in records:
        assert record.outcome.finished, record.output
    return records


@pytest.fixture(scope="module")
def chromium() -> Any:
    found = find_chromium()
    if found is None:
        pytest.skip(f"Chromium and chromedriver are not installed ({INSTALL}; .ci/run installs "
                    "them where apt-get works)")
    with headless_chromium(*found) as browser:
        yield browser


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
    done = write_report(["alphas", "alphas_short"], out=page, tracking_uri=grid.uri,
                        importances={"alphas": {"alpha": 0.8, "temperature": 0.2}})
    assert done.path == page.resolve()
    expected = ["alpha_overlay",
                "accuracy_front", "accuracy_vs_alpha", "alpha_by_temperature",
                "learning_curves", "parameter_importances",
                "accuracy_front", "accuracy_vs_alpha", "learning_curves",
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
    run = data.trials[data.trials["trial_id"] == top.label].iloc[0]
    config = TrainConfig.from_dict(config_from_run(run, fields=TrainConfig.field_names()))
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

    from kdtune.sweep_report.sweep_data import SweepData, Value, alpha_series
    from kdtune.sweep_results import TeacherFacts
    from kdtune.vocabulary import TAG_FINALIST

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
