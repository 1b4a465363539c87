"""Printing and saving run results (terminal tables, JSON, the student's files)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdtune.vocabulary import LATENCY_SPREADS, TEACHER_LATENCY_SPREAD

# How each metric is shown: (label, format).
_FORMATS: dict[str, tuple[str, str]] = {
    "val_accuracy": ("val accuracy", "{:.4f}"),
    "test_accuracy": ("test accuracy", "{:.4f}"),
    "val_loss": ("val loss", "{:.4f}"),
    "val_accuracy_sd": ("val acc sd", "{:.4f}"),
    "train_per_class": ("per class", "{}"),
    "params": ("params", "{:,.0f}"),
    "flops": ("FLOPs / sample", "{:,.0f}"),
    "latency_ms_b1": ("CPU ms, batch 1", "{:.3f}"),
    "latency_ms_b256": ("CPU ms, batch 256", "{:.3f}"),
    LATENCY_SPREADS[1]: ("CPU ms, batch 1, IQR", "{:.3f}"),
    LATENCY_SPREADS[256]: ("CPU ms, batch 256, IQR", "{:.3f}"),
    "speedup": ("speedup vs teacher", "{:.2f}x"),
    "train_time_s": ("train time (s)", "{:.2f}"),
    "teacher_params": ("teacher params", "{:,.0f}"),
    "teacher_test_accuracy": ("teacher test accuracy", "{:.4f}"),
    "teacher_latency_ms_b256": ("teacher CPU latency, batch 256 (ms)", "{:.3f}"),
    TEACHER_LATENCY_SPREAD: ("teacher CPU latency, batch 256, IQR (ms)", "{:.3f}"),
    "student_alone": ("student alone", "{:.4f}"),
    "gap_closed": ("gap closed", "{:.0%}"),
}

stderr = Console(stderr=True, highlight=False)


def fmt(name: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if name not in _FORMATS and isinstance(value, float):
        return f"{value:.4g}"
    _, pattern = _FORMATS.get(name, (name, "{}"))
    try:
        return pattern.format(value)
    except (TypeError, ValueError):
        return str(value)


def print_metrics(metrics: Mapping[str, Any], *, title: str) -> None:
    """A two-column table of the final metrics on stdout."""
    table = Table(title=title, show_header=False)
    for name, value in metrics.items():
        table.add_row(_FORMATS.get(name, (name, ""))[0], fmt(name, value))
    Console(highlight=False).print(table)


def epoch_printer(stream: Console = stderr):
    """A trainer callback printing one line per epoch to stderr (stdout stays for results)."""

    def callback(metrics: Mapping[str, float], run: Any) -> None:
        stream.print(f"epoch {int(metrics['epoch'])}/{run.config.epochs}  "
                     f"loss {metrics['train_loss']:.4f}  val acc {metrics['val_accuracy']:.4f}  "
                     f"{metrics['elapsed_s']:.1f}s")

    return callback


def json_ready(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics with NaN turned into null, so the JSON is valid."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in metrics.items()}


#: A trained student's file: ``{"format": STUDENT_FORMAT, "config", "state_dict"[, "metrics"]}``
#: (``kdtune train --out``, and an artifact of a sweep's best trial and of its finalists).
STUDENT_FILE = "student.pt"
STUDENT_FORMAT = "kdtune-student/1"
#: The files ``kdtune train --out DIR`` writes into ``DIR``.
RUN_FILES = (STUDENT_FILE, "metrics.json", "config.yaml")


def save_student(path: Path, config: Mapping[str, Any], state_dict: Mapping[str, Any],
                 metrics: Mapping[str, float] | None = None) -> None:
    """Write a student's weights and config (and metrics) as a :data:`STUDENT_FILE`."""
    from kdtune.teacher import atomic_save

    atomic_save({"format": STUDENT_FORMAT, "config": dict(config), "state_dict": state_dict,
                 **({"metrics": dict(metrics)} if metrics is not None else {})}, path)


def finished_run_files(folder: str | Path) -> list[str]:
    """The :data:`RUN_FILES` that ``folder`` already holds (a finished ``kdtune train``)."""
    return [name for name in RUN_FILES if (Path(folder).expanduser() / name).exists()]


def write_student(result: Any, out: str | Path) -> Path:
    """Write ``student.pt`` (weights + config + metrics), ``metrics.json`` and ``config.yaml``
    (their config without ``out``: training again from it does not write over this run)."""
    import yaml

    student, metrics, config = RUN_FILES
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    save_student(folder / student, result.config.to_saved_dict(), result.model.state_dict(),
                 result.metrics)
    (folder / metrics).write_text(json.dumps(json_ready(result.metrics), indent=2))
    (folder / config).write_text(yaml.safe_dump(result.config.to_saved_dict(),
                                                sort_keys=False))
    return folder


def table_from_rows(rows: list[Mapping[str, Any]], columns: list[str], *, title: str) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(_FORMATS.get(col, (col, ""))[0], justify="right")
    for row in rows:
        table.add_row(*[fmt(c, row.get(c, float("nan"))) for c in columns])
    return table


def print_table(table: Table) -> None:
    """Print on stdout; when stdout is not a terminal, wide enough not to squeeze columns."""
    console = Console(highlight=False, file=sys.stdout)
    if not console.is_terminal:
        console = Console(highlight=False, file=sys.stdout, width=240)
    console.print(table)
