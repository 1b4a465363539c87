"""Fixtures for the search-service tests: one local Ray, small spaces, one shared ASHA sweep.

* ``ray_session`` (session): a real local Ray with 2 CPUs for the whole run, started with
  ``address="local"`` so it never joins a cluster someone started with ``ray start`` on this
  machine. kdtune's ``init_ray`` reuses an initialised Ray, so in-process sweeps run on it.
  It inherits the session's ``KDTUNE_CACHE`` (the raylet passes its environment to workers).
* ``space_file(tmp_path, **changes)``: writes a tiny search space (digits, MLP students 8/16
  units, 6 epochs; the teacher an MLP (64,) trained once on the driver) with changes applied.
* ``asha_sweep`` (session): one real 8-trial TPE + ASHA sweep run in-process with
  :func:`kdtune.tune.sweep.run_sweep` into its own SQLite MLflow store and Ray storage; the
  sweep, resume and best tests all read it (a sweep costs ~40 s here).
* ``mlflow_template`` (session) / ``new_store``: a store that exists before the code under test
  runs, as a copy of kdtune's empty-store template (MLflow's migrations cost ~10 s).
"""

from __future__ import annotations

import copy
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray")
pytest.importorskip("optuna")
pytest.importorskip("mlflow")

#: A tiny space. TPE seed 5 samples all three methods among its first 8 trials (TPE's
#: start-up trials are random), so the conditional checks below see every branch.
BASE_SPACE: dict[str, Any] = {
    "name": "tiny",
    "fixed": {"dataset": "digits", "model": "mlp", "epochs": 6, "batch_size": 64,
              "seeds": [0]},
    "teacher": {"model": "mlp", "hidden": [64], "epochs": 5, "lr": 0.05},
    "parameters": {
        "method": {"type": "categorical", "choices": ["none", "vanilla", "two_temperature"]},
        "alpha": {"type": "float", "low": 0.1, "high": 0.9,
                  "when": {"method": ["vanilla", "two_temperature"]}},
        "temperature": {"type": "categorical", "choices": [2, 4],
                        "when": {"method": ["vanilla"]}},
        "t_right": {"type": "categorical", "choices": [2, 5],
                    "when": {"method": ["two_temperature"]}},
        "t_wrong": {"type": "categorical", "choices": [10, 20],
                    "when": {"method": ["two_temperature"]}},
        "hidden": {"type": "categorical", "choices": [[8], [16]]},
        "lr": {"type": "logfloat", "low": 0.01, "high": 0.2},
    },
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "search": {"num_samples": 8, "max_concurrent": 2, "sampler": "tpe", "seed": 5},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpus": 1, "gpus": 0},
}


def write_space(folder: Path, filename: str = "space.yaml", **changes: Any) -> Path:
    """BASE_SPACE with top-level keys replaced (``None`` removes one), written as YAML."""
    data = copy.deepcopy(BASE_SPACE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


@dataclass
class SweepRecord:
    """A finished sweep: where it lives and what it was."""

    name: str
    space: Path
    uri: str
    storage: Path
    outcome: Any  # kdtune.tune.sweep.SweepOutcome
    output: str

    @property
    def experiment_dir(self) -> Path:
        return self.storage / self.name

    def tracker(self) -> Any:
        from kdtune.tracking import Tracker

        return Tracker(self.uri)

    def cli_store(self) -> list[str]:
        return ["--mlflow-uri", self.uri, "--storage", str(self.storage)]


def last_json(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def ray_session(_session_cache: Path) -> Iterator[None]:
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_template(_session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kdtune's own empty, migrated store template (:mod:`kdtune.sqlite_store`), built once
    per test run in the session cache. kdtune's experiment is still created by the code
    under test (its artifact location lies next to the database it is in)."""
    from kdtune.sqlite_store import create_sqlite_store, template_path

    create_sqlite_store(tmp_path_factory.mktemp("mlflow-first") / "mlflow.db")
    return template_path()


def new_store(folder: Path, template: Path) -> Path:
    """``folder`` with a copy of the empty template database in it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, folder / "mlflow.db")
    return folder


def run_in_process(space: Path, store: Path, name: str | None = None,
                   num_samples: int | None = None) -> SweepRecord:
    from rich.console import Console

    from kdtune.tune.sweep import run_sweep

    buffer = io.StringIO()
    uri, storage = sqlite_uri(store), (store / "ray").resolve()
    outcome = run_sweep(str(space), name=name, mlflow_uri=uri, storage=str(storage),
                        num_samples=num_samples,
                        console=Console(file=buffer, highlight=False, width=200))
    return SweepRecord(outcome.name, space, uri, storage, outcome, buffer.getvalue())


@pytest.fixture(scope="session")
def asha_sweep(ray_session: None, mlflow_template: Path,
               tmp_path_factory: pytest.TempPathFactory) -> SweepRecord:
    """8 trials, TPE, ASHA (grace 1, reduction 2, 6 epochs), teacher trained on the driver."""
    root = tmp_path_factory.mktemp("asha-sweep")
    space = write_space(root, name="asha")
    record = run_in_process(space, new_store(root / "store", mlflow_template))
    assert record.outcome.finished, record.output
    return record
