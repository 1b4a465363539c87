"""``kdtune export``: a sweep's trained student as ONNX or as a ``torch.export`` program.

The student is the one whose run saved its weights (``student.pt``): by default the best by
the sweep's objective (validation; finalists first, when ``kdtune finalize`` has made them),
or the trial asked for. Beside the model goes a JSON file with its config and the
preprocessing its inputs need (shape, dtype, the loader's normalisation). Before anything is
written in place, the exported file is loaded back (onnxruntime, ``torch.export.load``) and
must give the student's logits on a batch of validation images to 1e-5. With a registry
name, the files are logged to the student's run and registered as a new version of that
model, tagged with the teacher's fingerprint, the sweep and the trial.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.errors import KdtuneError, choose_one
from kdtune.mlflow_store import require_store
from kdtune.paths import writable_file
from kdtune.report import STUDENT_FILE, STUDENT_FORMAT
from kdtune.resolve import config_from_dict
from kdtune.sweep_results import (
    finalist_mask,
    objective,
    runs_with_weights,
    teacher_facts,
)
from kdtune.tracking import Tracker
from kdtune.vocabulary import (
    LATENCY_SPREAD_METRICS,
    TAG_ERROR,
    TAG_EXPORT_FORMAT,
    TAG_READABLE_ID,
    TAG_SWEEP,
    TAG_TEACHER_FINGERPRINT,
    TAG_TRIAL_ID,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from kdtune.data import DataSplits

#: Export formats and the file suffix each is written with.
FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
SIDECAR_FORMAT = "kdtune-export/1"
#: Largest difference allowed between the exported model's logits and the student's.
TOLERANCE = 1e-5
CHECK_BATCH = 64
INPUT_NAME, OUTPUT_NAME = "x", "logits"
#: Where ``--register`` logs the files inside the student's run (``export/onnx`` ...).
ARTIFACT_DIR = "export"
SHOWN_METRICS = ("val_accuracy", "val_accuracy_sd", "test_accuracy", "test_accuracy_sd",
                 "params", "flops", "latency_ms_b1", "latency_ms_b256", *LATENCY_SPREAD_METRICS,
                 "speedup")


@dataclass(frozen=True)
class Exported:
    """What :func:`export_student` wrote."""

    path: Path
    sidecar: Path
    sweep: str
    label: str  # the run's readable id: NAME#12, or NAME#12/seed3 for a finalist's run
    trial_id: str
    run_id: str
    max_abs_diff: float
    registered: tuple[str, str] | None  # (model name, version)


def sidecar_path(out: Path) -> Path:
    """The JSON file written beside an export: its name plus ``.json``."""
    return out.with_name(out.name + ".json")


def export_student(name: str, *, fmt: str, out: str | Path, tracking_uri: str,
                   trial: str | None = None, register: str | None = None) -> Exported:
    """Export the chosen student of sweep ``name``; see the module docstring."""
    import torch

    if fmt not in FORMATS:
        raise choose_one("format", fmt, FORMATS)
    target = _check_out(Path(out).expanduser(), fmt)
    if register is not None and not register.strip():
        raise KdtuneError("--register needs a model name, e.g. --register digits-student")
    require_store(tracking_uri)
    tracker = Tracker(tracking_uri)
    parent = tracker.sweep_run(name)
    runs = tracker.child_runs(name)
    row = choose_run(tracker, name, runs, trial)
    state = _download_student(tracker, str(row["run_id"]))
    config, data, model = _rebuild(state)
    batch = data.x_val[:CHECK_BATCH]
    with torch.no_grad():
        expected = model(batch)
    teacher = teacher_facts(parent, runs)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kdtune-export-", dir=target.parent))
    try:
        staged = staging / target.name
        _write_model(model, batch, staged, fmt)
        diff = _check(staged, fmt, batch, expected)
        sidecar = _sidecar(fmt, target.name, name, row, config, data, teacher.fingerprint, diff)
        staged_sidecar = staging / sidecar_path(target).name
        staged_sidecar.write_text(json.dumps(sidecar, indent=2) + "\n")
        registered = None
        if register is not None:
            registered = _register(tracker, register.strip(), row, fmt, staging, name,
                                   teacher.fingerprint)
        os.replace(staged_sidecar, sidecar_path(target))
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(target, sidecar_path(target), name, readable_id(row), str(row["trial_id"]),
                    str(row["run_id"]), diff, registered)


def _check_out(out: Path, fmt: str) -> Path:
    suffix = FORMATS[fmt]
    if out.suffix != suffix:
        raise KdtuneError(f"--out {out}: a {fmt} export is written to a file ending in "
                          f"{suffix} (e.g. student{suffix}; its config goes beside it as "
                          f"student{suffix}.json)")
    if out.is_dir():
        raise KdtuneError(f"--out {out} is a folder; give the file to write, e.g. "
                          f"{out / ('student' + suffix)}")
    return writable_file(out).resolve()


# -- which student -----------------------------------------------------------------------------
def choose_run(tracker: Tracker, name: str, runs: pd.DataFrame,
               trial: str | None) -> pd.Series:
    """The run to export: ``trial`` (a readable id such as ``NAME#12`` or ``NAME#12/seed3``,
    a Ray trial id or an MLflow run id), else the best run with saved weights by the sweep's
    first objective, finalists before trials."""
    saved = set(runs_with_weights(tracker, runs)) if len(runs) else set()
    with_weights = runs[runs["run_id"].isin(saved)] if len(runs) else runs
    if trial is not None:
        labels = runs.apply(readable_id, axis=1) if len(runs) else runs["run_id"]
        match = runs[(labels == trial) | (runs["trial_id"].astype(str) == trial)
                     | (runs["run_id"] == trial)]
        if match.empty:
            ids = ", ".join(map(str, labels.head(12)))
            more = f" (and {len(runs) - 12} more)" if len(runs) > 12 else ""
            raise KdtuneError(f"no trial {trial!r} in sweep {name!r} (a readable id such as "
                              f"{name}#3, a Ray trial id or an MLflow run id); its runs: "
                              f"{ids or '(none)'}{more}")
        if match.iloc[0]["run_id"] not in saved:
            raise KdtuneError(f"trial {trial!r} of sweep {name!r} saved no weights; only "
                              f"trials with saved weights can be exported: "
                              f"{_listing(with_weights)}")
        return match.iloc[0]
    if len(runs) and (runs["status"] == "FAILED").all():
        errors = runs.get(f"tags.{TAG_ERROR}")
        first = next((str(e) for e in errors if isinstance(e, str)), "no reason recorded") \
            if errors is not None else "no reason recorded"
        raise KdtuneError(f"sweep {name!r} has no trained student: all its {len(runs)} trials "
                          f"failed (the first: {first.splitlines()[0][:200]}); fix the space and "
                          "run `kdtune search` again")
    if with_weights.empty:
        raise KdtuneError(f"sweep {name!r} has no trained student: none of its "
                          f"{len(runs)} trial runs saved weights (a sweep saves its best "
                          f"trial's when it finishes; an unfinished one: `kdtune resume "
                          f"{name}`)")
    finalists = with_weights[finalist_mask(with_weights)]
    pool = finalists if len(finalists) else with_weights
    metrics, modes = objective(tracker, name)
    column = f"metrics.{metrics[0]}"
    if column in pool.columns and pool[column].notna().any():
        pool = pool.sort_values(column, ascending=modes[0] == "min", kind="stable",
                                na_position="last")
    return pool.iloc[0]


def _listing(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "none of its trials saved weights"
    return ", ".join(readable_id(row) for _, row in frame.iterrows())


def readable_id(row: pd.Series) -> str:
    """A run's readable id (tag ``kdtune.id``), else its Ray trial id."""
    label = row.get(f"tags.{TAG_READABLE_ID}")
    return label if isinstance(label, str) and label else str(row["trial_id"])


def _download_student(tracker: Tracker, run_id: str) -> dict[str, Any]:
    import torch

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
    with tempfile.TemporaryDirectory(prefix="kdtune-student-") as folder:
        path = tracker.client.download_artifacts(run_id, STUDENT_FILE, folder)
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STUDENT_FORMAT:
        raise KdtuneError(f"run {run_id}'s {STUDENT_FILE} is not a kdtune student "
                          f"(format {STUDENT_FORMAT!r})")
    return state


def _rebuild(state: dict[str, Any]) -> tuple[Any, DataSplits, nn.Module]:
    """The student's config, its data (input shape, classes, normalisation, a batch) and the
    student with its weights, on the CPU in eval mode."""
    from kdtune.trainer import build_student, load_data

    config = config_from_dict(state["config"], where="student.pt")
    data = load_data(config)
    model = build_student(config, data)
    model.load_state_dict(state["state_dict"])
    return config, data, model.eval()


# -- writing and checking ----------------------------------------------------------------------
def _write_model(model: nn.Module, example: torch.Tensor, path: Path, fmt: str) -> None:
    """ONNX via torch's dynamo exporter (onnxscript) or a ``torch.export`` program; the batch
    dimension is dynamic in both."""
    import torch

    batch = torch.export.Dim("batch", min=1)
    dynamic = ({0: batch},)
    if fmt == "onnx":
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    verbose=False)
        program.save(str(path))
    else:
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dynamic), path)


def run_exported(path: str | Path, fmt: str, batch: torch.Tensor) -> torch.Tensor:
    """Logits of an exported file on ``batch``: onnxruntime for ONNX, the unflattened module of
    ``torch.export.load`` for a ``.pt2`` program."""
    import torch

    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return torch.from_numpy(session.run(None, {name: batch.numpy()})[0])
    with torch.no_grad():
        return torch.export.load(str(path)).module()(batch)


def _check(path: Path, fmt: str, batch: torch.Tensor, expected: torch.Tensor) -> float:
    """The exported file's largest logit difference from the student's; above the tolerance
    the export is wrong (an exporter bug), and nothing is written."""
    got = run_exported(path, fmt, batch)
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE:
        raise RuntimeError(f"the {fmt} export gives logits {diff:.3g} away from the student's "
                           f"(tolerance {TOLERANCE:g}); not written")
    return diff


def _sidecar(fmt: str, filename: str, sweep: str, row: pd.Series, config: Any,
             data: DataSplits, fingerprint: str | None, diff: float) -> dict[str, Any]:
    import math

    norm = data.normalisation
    metrics = {m: float(row[f"metrics.{m}"]) for m in SHOWN_METRICS
               if f"metrics.{m}" in row.index and not math.isnan(float(row[f"metrics.{m}"]))}
    return {
        "format": SIDECAR_FORMAT,
        "model_file": filename,
        "model_format": fmt,
        "sweep": sweep,
        "id": readable_id(row),
        "trial_id": str(row["trial_id"]),
        "run_id": str(row["run_id"]),
        "teacher_fingerprint": fingerprint,
        "input": {"name": INPUT_NAME, "shape": ["batch", *data.in_shape], "dtype": "float32",
                  "layout": "NCHW"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", data.num_classes],
                   "dtype": "float32", "meaning": "logits (softmax gives class probabilities)"},
        "preprocessing": {
            "dataset": data.name,
            "formula": "x[:, c] = (raw[:, c] / scale - mean[c]) / std[c]",
            "scale": norm.scale if norm else None,
            "mean": list(norm.mean) if norm else None,
            "std": list(norm.std) if norm else None,
        },
        "num_classes": data.num_classes,
        "config": config.to_dict(),
        "metrics": metrics,
        "check": {"batch": int(min(CHECK_BATCH, len(data.x_val))), "split": "validation",
                  "max_abs_logit_diff": diff, "tolerance": TOLERANCE},
    }


# -- the model registry ------------------------------------------------------------------------
def _register(tracker: Tracker, model_name: str, row: pd.Series, fmt: str, staging: Path,
              sweep: str, fingerprint: str | None) -> tuple[str, str]:
    """Log the staged files to the student's run and register them as a new model version."""
    from mlflow.exceptions import MlflowException

    client, run_id = tracker.client, str(row["run_id"])
    tags = {TAG_SWEEP: sweep, TAG_TRIAL_ID: str(row["trial_id"]),
            TAG_READABLE_ID: readable_id(row),
            TAG_TEACHER_FINGERPRINT: fingerprint or "unknown", TAG_EXPORT_FORMAT: fmt}
    try:
        try:
            client.create_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        client.log_artifacts(run_id, str(staging), f"{ARTIFACT_DIR}/{fmt}")
        version = client.create_model_version(
            model_name, source=f"runs:/{run_id}/{ARTIFACT_DIR}/{fmt}", run_id=run_id, tags=tags,
            description=f"kdtune student of sweep {sweep!r}, {readable_id(row)} ({fmt})")
    except MlflowException as exc:
        if exc.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS"):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.error_code
            raise KdtuneError(f"--register {model_name!r}: {first}") from None
        raise
    return model_name, str(version.version)
