"""New MLflow SQLite stores are copies of one migrated, empty template per MLflow version."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from kdtune.sqlite_store import copy_template, create_sqlite_store, template_path
from kdtune.tracking import Tracker


def uri(db: Path) -> str:
    return f"sqlite:///{db}"


def test_stores_are_copies_of_a_template_that_mlflow_accepts(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    create_sqlite_store(a)
    assert template_path().is_file()
    built = template_path().stat().st_mtime_ns
    create_sqlite_store(b)
    assert template_path().stat().st_mtime_ns == built  # reused, not rebuilt
    for db in (a, b):
        client = MlflowClient(uri(db))  # verifies the schema is MLflow's current one
        assert [e.name for e in client.search_experiments()] == ["Default"]
    # the stores are independent: a run in one is not in the other
    exp = MlflowClient(uri(a)).create_experiment("only-in-a")
    MlflowClient(uri(a)).create_run(exp)
    assert [e.name for e in MlflowClient(uri(b)).search_experiments()] == ["Default"]


def test_tracker_creates_its_store_from_the_template(tmp_path: Path) -> None:
    db = tmp_path / "store" / "mlflow.db"
    tracker = Tracker(uri(db))
    tracker.ensure_experiment()
    assert template_path().is_file() and db.is_file()
    exp = tracker.client.get_experiment_by_name("kdtune")
    assert exp.artifact_location == (db.parent / "artifacts").as_uri()
    run = tracker.start_sweep("s", tags={}, params={"num_samples": 1})
    assert tracker.find_sweep("s") == run


def test_an_existing_store_is_never_replaced(tmp_path: Path) -> None:
    """Two processes creating one store: the second copy is dropped, not moved over."""
    db = tmp_path / "store" / "mlflow.db"
    create_sqlite_store(db)
    MlflowClient(uri(db)).create_experiment("kept")
    assert copy_template(db)
    assert "kept" in [e.name for e in MlflowClient(uri(db)).search_experiments()]
    assert [p.name for p in db.parent.iterdir()] == ["mlflow.db"]  # no leftover copy
