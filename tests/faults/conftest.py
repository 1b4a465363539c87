"""Fixtures of the fault-injection suite (see ``harness.py`` for the processes and servers).

* ``faults_ray`` (session): the in-process local Ray of the test run (2 CPUs), started here
  unless another fixture started it already; in-process sweeps run on it.
* ``store_template`` (session): kdtune's empty MLflow store template, so that a new store is a
  copy (MLflow's migrations run once per test run).
* ``ray_tmp``: a short temp folder for the local Ray of a driver subprocess.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import ray_temp

pytest.importorskip("ray")
pytest.importorskip("mlflow")


@pytest.fixture(scope="session")
def faults_ray(_session_cache: Path) -> Iterator[None]:
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        started = True
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def store_template(_session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kdtune.sqlite_store import create_sqlite_store, template_path

    if not template_path().is_file():
        create_sqlite_store(tmp_path_factory.mktemp("mlflow-first") / "mlflow.db")
    return template_path()


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    with ray_temp() as path:
        yield path
