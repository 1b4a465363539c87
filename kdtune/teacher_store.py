"""Find a teacher already trained with the same config under a folder, or train one.

A teacher checkpoint remembers the config it was trained with, so asking again for the same
teacher (``kdtune teacher`` twice, a sweep resumed) reuses it instead of training again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kdtune.config import TrainConfig
from kdtune.teacher import read_checkpoint, save_teacher
from kdtune.trainer import Callback, train

#: Where teachers go when no folder is named.
DEFAULT_FOLDER = "kdtune-runs/teachers"


def teacher_key(config: TrainConfig) -> dict:
    """The parts of a config that decide the teacher's weights (not where it is written)."""
    return config.replace(out=None, teacher=None, device="auto", threads=None).to_dict()


def find_teacher(config: TrainConfig, folder: str | Path) -> Path | None:
    """The newest checkpoint under ``folder`` trained with ``config``, if any."""
    key = teacher_key(config)
    candidates = sorted(Path(folder).glob("teacher-*.pt"), key=lambda p: p.stat().st_mtime,
                        reverse=True)
    for path in candidates:
        try:
            if read_checkpoint(path).get("train_config") == key:
                return path
        except ValueError:
            continue
    return None


def teachers_folder(config: TrainConfig, out: str | Path | None = None) -> Path:
    """Where :func:`obtain_teacher` looks for and writes the teacher: ``out``, else
    ``config.out``, else ``kdtune-runs/teachers``."""
    return Path(out or config.out or DEFAULT_FOLDER).expanduser()


def obtain_teacher(config: TrainConfig, *, out: str | Path | None = None, retrain: bool = False,
                   callbacks: Iterable[Callback] = ()) -> tuple[Path, dict[str, float], bool]:
    """Return ``(checkpoint path, metrics, reused)`` for a teacher trained per ``config``.

    ``config.method`` must be ``none``. The checkpoint goes under :func:`teachers_folder`.
    """
    folder = teachers_folder(config, out).resolve()
    if not retrain and folder.is_dir():
        found = find_teacher(config, folder)
        if found is not None:
            return found, dict(read_checkpoint(found)["metrics"]), True
    result = train(config, callbacks)
    model_spec = {"name": config.model, "kwargs": _plain(config.model_kwargs())}
    path = save_teacher(result.model, model_spec, result.data_spec, result.metrics, folder,
                        train_config=teacher_key(config))
    return path, result.metrics, False


def _plain(kwargs: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
