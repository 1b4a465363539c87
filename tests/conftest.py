"""Shared fixtures for the whole test run.

* ``kdtune_cache`` (autouse): every test gets its own ``KDTUNE_CACHE`` folder, so the
  teacher-output cache never touches ``~/.cache/kdtune``; its ``mlflow/`` folder (the empty
  MLflow store template, a function of the MLflow version only) is the session's, so the
  migrations run once per test run, not once per test that makes a store.
* ``teacher_path`` (session): one small MLP teacher on digits, trained once per run with
  :func:`kdtune.teacher_store.obtain_teacher`; ``teacher`` loads a fresh copy of it per test.
* ``teacher_config``: the config behind it; ``tiny_student(**changes)``: a few-second MLP
  student config distilled from it.

``make test`` runs two pytest-xdist workers, a test module at a time each
(``--dist loadscope``): a module's tests run in order on one worker and share its
module-scoped fixtures; each worker builds the session fixtures (the teacher, the shared sweep,
its local Ray) once for itself.

Torch runs single-threaded here: the CI machines have few, shared cores, and intra-op threads
make the tiny models these tests train tens of times slower, not faster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kdtune.config import TrainConfig
from kdtune.teacher import Teacher, load_teacher

torch.set_num_threads(1)

# The session teacher: small and quick (a few seconds), ~0.95 validation accuracy on digits.
TEACHER_CONFIG = TrainConfig(dataset="digits", model="mlp", hidden=(128,), method="none",
                             epochs=8, batch_size=64, lr=0.05, seed=0, device="cpu")


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``KDTUNE_CACHE`` for session-scoped fixtures (they run before per-test fixtures)."""
    path = tmp_path_factory.mktemp("kdtune-cache-session")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDTUNE_CACHE", str(path))
        yield path


@pytest.fixture(autouse=True)
def kdtune_cache(_session_cache: Path, tmp_path_factory: pytest.TempPathFactory,
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh teacher-output cache folder for each test (returned for inspection; outside
    the test's ``tmp_path``, which tests check for stray files)."""
    path = tmp_path_factory.mktemp("kdtune-cache")
    (_session_cache / "mlflow").mkdir(exist_ok=True)
    (path / "mlflow").symlink_to(_session_cache / "mlflow", target_is_directory=True)
    monkeypatch.setenv("KDTUNE_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def teacher_config() -> TrainConfig:
    """The config the session teacher is trained with."""
    return TEACHER_CONFIG


@pytest.fixture(scope="session")
def teacher_path(_session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoint of :data:`TEACHER_CONFIG`, trained once per test run."""
    from kdtune.teacher_store import obtain_teacher

    path, _, _ = obtain_teacher(TEACHER_CONFIG, out=tmp_path_factory.mktemp("teachers"))
    return path


@pytest.fixture
def teacher(teacher_path: Path) -> Teacher:
    """A freshly loaded session teacher (its in-memory output cache starts empty)."""
    return load_teacher(teacher_path)


@pytest.fixture
def tiny_student(teacher_path: Path) -> Any:
    """``tiny_student(**changes)``: a few-second MLP student config distilled from the teacher."""

    def make(**changes: Any) -> TrainConfig:
        base = dict(dataset="digits", model="mlp", hidden=(16,), method="vanilla", epochs=2,
                    batch_size=64, alpha=0.5, temperature=4.0, teacher=str(teacher_path),
                    device="cpu", seed=0)
        base.update(changes)
        return TrainConfig(**base)

    return make
