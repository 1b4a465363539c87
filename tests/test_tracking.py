"""kdtune.tracking against a real MLflow SQLite store (no mocks).

Creating a SQLite store costs ~10 s (MLflow's migrations), so one store serves the module;
each test works in its own sweep.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from kdtune.errors import KdtuneError
from kdtune.mlflow_store import default_store, default_tracking_uri
from kdtune.runs import config_from_run, decode_param, encode_param
from kdtune.tracking import Tracker, best_configs

pytest.importorskip("mlflow")
pytest.importorskip("pandas")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CONFIG = {
    "dataset": "digits", "data_root": None, "augment": None, "download": False, "amp": True,
    "epochs": 3, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "alpha": 0.1,
    "hidden": [300, 300], "blocks": [1, 1, 0, 0], "temperature": 3.5, "t_right": 2.0,
    "out": "3", "teacher": "null", "model": "true", "method": "", "schedule": '"q"',
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Tracker]:
    root = tmp_path_factory.mktemp("store")
    uri = default_tracking_uri(default_store(root))
    tracker = Tracker(uri)
    tracker.ensure_experiment()
    return uri, tracker


def _sweep(tracker: Tracker, name: str, metrics: str = "val_accuracy",
           modes: str = "max") -> str:
    return tracker.start_sweep(name, tags={"kdtune.space": "x.yaml"},
                               params={"objective.metrics": metrics, "objective.modes": modes})


def _trial(tracker: Tracker, parent: str, trial_id: str, status: str = "FINISHED",
           tags: dict[str, str] | None = None, **metrics: float) -> str:
    run_id = tracker.start_trial(parent, trial_id, params={"lr": 0.1, "trial": trial_id})
    tracker.end_trial(run_id, status, metrics=metrics, tags=tags or {})
    return run_id


def test_default_store_and_uri(tmp_path: Path) -> None:
    store = default_store(tmp_path)
    assert store == tmp_path.resolve() / "kdtune-runs"
    assert default_tracking_uri(store) == f"sqlite:///{store}/mlflow.db"
    assert default_tracking_uri(store).startswith("sqlite:////")  # absolute


def test_nesting_via_tags(store: tuple[str, Tracker]) -> None:
    _, tracker = store
    parent = _sweep(tracker, "nest")
    assert tracker.find_sweep("nest") == parent
    assert tracker.find_sweep("nope") is None
    children = {tracker.start_trial(parent, f"t{i}", params={"i": i}) for i in range(2)}
    client = tracker.client
    prun = client.get_run(parent)
    assert prun.info.run_name == "nest"
    assert prun.data.tags["kdtune.kind"] == "sweep"
    assert prun.data.tags["kdtune.space"] == "x.yaml"
    for run_id in children:
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.parentRunId"] == parent
        assert tags["kdtune.sweep"] == "nest"
        assert tags["kdtune.kind"] == "trial"
    assert client.get_parent_run(next(iter(children))).info.run_id == parent
    frame = tracker.trial_runs("nest")
    assert set(frame["run_id"]) == children
    assert sorted(frame["trial_id"]) == ["t0", "t1"]
    assert (frame["status"] == "RUNNING").all()
    sweeps = tracker.list_sweeps()
    assert parent in set(sweeps.loc[sweeps["name"] == "nest", "run_id"])
    tracker.end_sweep(parent)
    assert client.get_run(parent).info.status == "FINISHED"


def test_start_trial_is_idempotent(store: tuple[str, Tracker]) -> None:
    _, tracker = store
    parent = _sweep(tracker, "idem")
    first = tracker.start_trial(parent, "a", params={"lr": 0.1, "hidden": [2]})
    tracker.end_trial(first, "KILLED", tags={"kdtune.rung": "1"})
    # A restored trial (possibly in another process) reopens the same run.
    again = Tracker(tracker.tracking_uri).start_trial(
        parent, "a", params={"lr": 0.1, "hidden": [2], "new": 1}, tags={"resumed": "1"})
    assert again == first
    run = tracker.client.get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"lr": "0.1", "hidden": "[2]", "new": "1"}
    assert run.data.tags["resumed"] == "1"
    assert len(tracker.trial_runs("idem")) == 1


def test_epoch_metrics_have_steps(store: tuple[str, Tracker]) -> None:
    _, tracker = store
    parent = _sweep(tracker, "epochs")
    run_id = tracker.start_trial(parent, "e", params={})
    for epoch in range(3):
        tracker.log_epochs(run_id, [(epoch, {"train_loss": 1.0 - epoch / 10, "epoch": epoch,
                                             "val_accuracy": epoch / 10, "val_loss": 2.0})])
    # The final value is the summary even though it is lower than the last epoch's.
    tracker.end_trial(run_id, "FINISHED", metrics={"val_accuracy": 0.15, "params": 1234})
    history = tracker.client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.9), (2, 0.8)]
    acc = tracker.client.get_metric_history(run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in acc) == [(0, 0.0), (1, 0.1), (2, 0.15), (2, 0.2)]
    metrics = tracker.client.get_run(run_id).data.metrics
    assert metrics["val_accuracy"] == 0.15
    assert metrics["params"] == 1234
    assert metrics["epoch"] == 2


def test_statuses_and_their_tags(store: tuple[str, Tracker]) -> None:
    _, tracker = store
    parent = _sweep(tracker, "status")
    done = _trial(tracker, parent, "f", val_accuracy=0.9)
    killed = _trial(tracker, parent, "k", "KILLED", {"kdtune.rung": "2"}, val_accuracy=0.4)
    failed = _trial(tracker, parent, "x", "FAILED", {"kdtune.error": "E" * 9000})
    frame = tracker.trial_runs("status").set_index("run_id")
    assert frame.loc[done, "status"] == "FINISHED"
    assert frame.loc[killed, "status"] == "KILLED"
    assert frame.loc[killed, "tags.kdtune.rung"] == "2"
    assert frame.loc[failed, "status"] == "FAILED"
    assert frame.loc[failed, "tags.kdtune.error"].startswith("EEE")
    assert len(frame.loc[failed, "tags.kdtune.error"]) <= 8000
    with pytest.raises(ValueError):
        tracker.end_trial(done, "DONE")


def test_best_configs_single_metric(store: tuple[str, Tracker]) -> None:
    uri, tracker = store
    parent = _sweep(tracker, "single")
    ids = {name: _trial(tracker, parent, name, val_accuracy=acc, params=p)
           for name, acc, p in [("a", 0.5, 30), ("b", 0.9, 10), ("c", 0.7, 20), ("d", 0.8, 5)]}
    ids["k"] = _trial(tracker, parent, "k", "KILLED", val_accuracy=0.95, params=1)
    _trial(tracker, parent, "nometric", train_time_s=1.0)  # lacks the objective: left out
    best = tracker.best_configs("single", metrics=["val_accuracy"], modes=["max"])
    assert list(best["trial_id"]) == ["b", "d", "c", "a"]
    assert list(best.columns[:4]) == ["run_id", "trial_id", "status", "metrics.val_accuracy"]
    top2 = tracker.best_configs("single", metrics=["params"], modes=["min"], top=2)
    assert list(top2["run_id"]) == [ids["d"], ids["b"]]
    with_killed = tracker.best_configs("single", metrics=["val_accuracy"], modes=["max"],
                                       top=1, status=("FINISHED", "KILLED"))
    assert list(with_killed["trial_id"]) == ["k"]
    # The public function: objective from the parent run, default top 10.
    assert list(best_configs("single", tracking_uri=uri)["trial_id"]) == ["b", "d", "c", "a"]
    # A metric without a mode takes its natural direction.
    assert list(best_configs("single", metric="params", top=1, tracking_uri=uri)
                ["trial_id"]) == ["d"]


def test_pareto_front(store: tuple[str, Tracker]) -> None:
    uri, tracker = store
    parent = _sweep(tracker, "pareto", "val_accuracy,params", "max,min")
    points = {"A": (0.90, 1000), "B": (0.80, 500), "C": (0.85, 2000), "D": (0.70, 500),
              "E": (0.60, 100)}
    ids = {k: _trial(tracker, parent, k, val_accuracy=a, params=p) for k, (a, p) in points.items()}
    # C is beaten by A (better on both), D by B (worse accuracy, same params).
    front = best_configs("pareto", tracking_uri=uri)
    assert list(front["run_id"]) == [ids["A"], ids["B"], ids["E"]]
    explicit = tracker.best_configs("pareto", metrics=["val_accuracy", "params"],
                                    modes=["max", "min"], top=2)
    assert list(explicit["run_id"]) == [ids["A"], ids["B"]]
    # Maximising both: params count as good, so C (most params) joins A on the front.
    both_max = best_configs("pareto", metric=["val_accuracy", "params"], mode="max",
                            tracking_uri=uri)
    assert set(both_max["run_id"]) == {ids["A"], ids["C"]}
    # One metric given: a ranking, not a front.
    ranked = best_configs("pareto", metric="val_accuracy", tracking_uri=uri)
    assert list(ranked["trial_id"]) == ["A", "C", "B", "D", "E"]


def test_config_round_trip(store: tuple[str, Tracker]) -> None:
    _, tracker = store
    for value in CONFIG.values():
        assert decode_param(encode_param(value)) == value
    assert encode_param("digits") == "digits"
    assert encode_param([1, 2]) == "[1, 2]"
    assert encode_param((1, 2)) == "[1, 2]"
    parent = _sweep(tracker, "roundtrip")
    run_id = tracker.start_trial(parent, "r", params=CONFIG)
    row = tracker.trial_runs("roundtrip").iloc[0]
    for source in (row, tracker.client.get_run(run_id).data.params):
        rebuilt = config_from_run(source)
        assert rebuilt == CONFIG
        assert type(rebuilt["epochs"]) is int and type(rebuilt["lr"]) is float
        assert type(rebuilt["amp"]) is bool and rebuilt["data_root"] is None
    assert config_from_run(row, fields=["lr", "hidden"]) == {"lr": 0.05, "hidden": [300, 300]}
    # A frame row with params another run logged (NaN here) drops them.
    other = tracker.start_trial(parent, "s", params={"lr": 0.2, "t_wrong": 10.0})
    frame = tracker.trial_runs("roundtrip").set_index("run_id")
    assert config_from_run(frame.loc[other]) == {"lr": 0.2, "t_wrong": 10.0}
    with pytest.raises(KdtuneError, match="at most 6000"):
        tracker.start_trial(parent, "big", params={"hidden": list(range(2000))})


def test_duplicate_sweep_name(store: tuple[str, Tracker]) -> None:
    uri, tracker = store
    _sweep(tracker, "dup")
    with pytest.raises(KdtuneError) as err:
        Tracker(uri).start_sweep("dup", tags={}, params={})
    assert str(err.value) == (f"sweep 'dup' already exists in {uri}; resume it with "
                              "`kdtune resume dup` or choose another --name")
    with pytest.raises(KdtuneError, match="invalid sweep name"):
        tracker.start_sweep("a'b\"c", tags={}, params={})


def test_missing_store_is_not_created(tmp_path: Path) -> None:
    uri = default_tracking_uri(default_store(tmp_path))
    with pytest.raises(KdtuneError, match=r"^no kdtune store at .*mlflow\.db; run `kdtune "
                                          r"search` first or pass --mlflow-uri$"):
        best_configs("any", tracking_uri=uri)
    tracker = Tracker(uri)
    assert tracker.find_sweep("any") is None
    assert tracker.list_sweeps().empty
    assert not (tmp_path / "kdtune-runs").exists()


def test_unknown_sweep_and_metric(store: tuple[str, Tracker]) -> None:
    uri, tracker = store
    parent = _sweep(tracker, "known")
    _trial(tracker, parent, "t", val_accuracy=0.5, params=10)
    while len(tracker.list_sweeps()) <= 10:
        _sweep(tracker, f"filler{len(tracker.list_sweeps())}")
    with pytest.raises(KdtuneError, match=r"no sweep 'knwon' in .*did you mean 'known'.*"
                                          r"existing sweeps: .*known"):
        best_configs("knwon", tracking_uri=uri)
    with pytest.raises(KdtuneError) as err:
        tracker.trial_runs("nothing-like-it")
    listed = str(err.value).split("existing sweeps: ", 1)[1]
    assert len(listed.split(", ")) <= 11 and "more)" in listed  # at most 10 names
    with pytest.raises(KdtuneError, match=r"metric 'flops' was not logged .*'known'; "
                                          r"logged metrics: params, val_accuracy$"):
        best_configs("known", metric="flops", tracking_uri=uri)
    with pytest.raises(KdtuneError, match="unknown mode 'up'"):
        best_configs("known", metric="val_accuracy", mode="up", tracking_uri=uri)
    with pytest.raises(KdtuneError, match="no default mode"):
        best_configs("known", metric="weird", tracking_uri=uri)


def test_artifacts(store: tuple[str, Tracker], tmp_path: Path) -> None:
    _, tracker = store
    parent = _sweep(tracker, "artifacts")
    run_id = tracker.start_trial(parent, "w", params={"lr": 0.1}, config_yaml="lr: 0.1\n")
    weights = tmp_path / "student.pt"
    weights.write_bytes(b"\0" * 16)
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    tracker.log_artifact(run_id, weights, "model")
    tracker.log_artifact(run_id, folder)
    client = tracker.client
    assert {f.path for f in client.list_artifacts(run_id)} == {"config.yaml", "model",
                                                                "notes.txt"}
    assert [f.path for f in client.list_artifacts(run_id, "model")] == ["model/student.pt"]
    local = client.download_artifacts(run_id, "config.yaml", str(tmp_path))
    assert Path(local).read_text() == "lr: 0.1\n"
    # A SQLite store keeps artifacts beside the database, not in the current folder.
    store_dir = Path(tracker.tracking_uri.removeprefix("sqlite:///")).parent
    assert (store_dir / "artifacts" / run_id / "artifacts" / "model" / "student.pt").is_file()


def test_tracker_pickles_without_client(store: tuple[str, Tracker]) -> None:
    uri, tracker = store
    clone = pickle.loads(pickle.dumps(tracker))
    assert clone._client is None and clone.tracking_uri == uri
    assert clone.find_sweep("nest") == tracker.find_sweep("nest")
