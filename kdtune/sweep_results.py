"""What a sweep left in MLflow, read for ``kdtune report`` and ``kdtune export``.

Child runs of a sweep's parent are its trials and, once ``kdtune finalize`` has run, its
finalists: child runs tagged ``kdtune.stage=final`` (the chosen configurations retrained on
fresh seeds). A run whose artifacts hold ``student.pt`` (:data:`kdtune.report.STUDENT_FILE`)
has saved student weights. The teacher's facts come from the parent run's tags and the
trials' ``teacher_*`` metrics, and from the teacher checkpoint itself when it is still where
the sweep left it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.report import STUDENT_FILE
from kdtune.tracking import Tracker
from kdtune.vocabulary import (
    MODES,
    PARAM_TEACHER,
    ROLE_KD,
    ROLE_TEACHER,
    STAGE_FINAL,
    TAG_OUT_OF_TOP,
    TAG_ROLE,
    TAG_STAGE,
    TAG_TEACHER_FINGERPRINT,
)

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

#: Parameters that say how a run was executed, not what it trained.
NOT_A_SETTING = ("seed", "seeds", "out", "device", "threads", "teacher", "data_root",
                 "download", "compile", "channels_last", "teacher_outputs")


def finalist_mask(frame: pd.DataFrame) -> pd.Series:
    """True for the finalists among a sweep's child runs: the chosen configurations with
    distillation (tags ``kdtune.stage=final``, ``kdtune.role=kd``)."""
    return final_mask(frame, ROLE_KD)


def final_mask(frame: pd.DataFrame, role: str | None = None) -> pd.Series:
    """True for the finalist runs (of ``role``: ``kd``, ``student_alone`` or ``teacher``) of
    the trials the latest ``kdtune finalize`` chose (not those tagged out of its top)."""
    import pandas as pd

    stage, roles = f"tags.{TAG_STAGE}", f"tags.{TAG_ROLE}"
    if stage not in frame.columns:
        return pd.Series(False, index=frame.index)
    final = (frame[stage] == STAGE_FINAL) & (frame.get(f"tags.{TAG_OUT_OF_TOP}") != "true")
    return final if role is None else final & (frame.get(roles) == role)


def objective(tracker: Tracker, name: str) -> tuple[list[str], list[str]]:
    """The sweep's objective as recorded, else validation accuracy (maximised)."""
    from kdtune.errors import KdtuneError

    try:
        return tracker.objective(name)
    except KdtuneError:
        return ["val_accuracy"], [MODES["val_accuracy"]]


def runs_with_weights(tracker: Tracker, frame: pd.DataFrame) -> list[str]:
    """Run ids (in ``frame``'s order) whose artifacts hold ``student.pt``."""
    found = []
    for run_id in frame["run_id"]:
        paths = {info.path for info in tracker.client.list_artifacts(str(run_id))}
        if STUDENT_FILE in paths:
            found.append(str(run_id))
    return found


@dataclass(frozen=True)
class TeacherFacts:
    """The sweep's teacher, as far as it is known (None: not recorded anywhere)."""

    checkpoint: str | None
    fingerprint: str | None
    val_accuracy: float | None
    test_accuracy: float | None
    params: float | None
    latency_ms_b256: float | None


def teacher_facts(parent: Run, trials: pd.DataFrame) -> TeacherFacts:
    """Fingerprint (parent tag, else the checkpoint, else its file name ``teacher-<model>-
    <fingerprint>.pt``), validation accuracy (the checkpoint's metrics), the test accuracy
    ``kdtune finalize`` read (its teacher run), and the size and batch-256 latency every
    trial logged (``trials``: the sweep's child runs)."""
    path = parent.data.params.get(PARAM_TEACHER)
    path = None if path in (None, "", "null", "None") else path
    fingerprint = parent.data.tags.get(TAG_TEACHER_FINGERPRINT)
    checkpoint = _read_checkpoint(path)
    val_accuracy = None
    if checkpoint is not None:
        fingerprint = fingerprint or checkpoint.get("fingerprint")
        val_accuracy = _number(checkpoint.get("metrics", {}).get("val_accuracy"))
    if fingerprint is None and path is not None:
        match = re.fullmatch(r"teacher-[^-]+-([0-9a-f]+)\.pt", Path(path).name)
        fingerprint = match[1] if match else None
    teacher_runs = trials[final_mask(trials, ROLE_TEACHER)]  # read once by kdtune finalize
    return TeacherFacts(checkpoint=path, fingerprint=fingerprint, val_accuracy=val_accuracy,
                        test_accuracy=_first(teacher_runs, "metrics.test_accuracy"),
                        params=_first(trials, "metrics.teacher_params"),
                        latency_ms_b256=_first(trials, "metrics.teacher_latency_ms_b256"))


def _read_checkpoint(path: str | None) -> dict[str, Any] | None:
    """The teacher checkpoint's fingerprint and metrics, if the file is still there."""
    if path is None or not Path(path).is_file():
        return None
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if not isinstance(ckpt, dict):
        return None
    return {"fingerprint": ckpt.get("fingerprint"), "metrics": dict(ckpt.get("metrics", {}))}


def _first(frame: pd.DataFrame, column: str) -> float | None:
    if column not in frame.columns:
        return None
    values = frame[column].dropna()
    return float(values.iloc[0]) if len(values) else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
