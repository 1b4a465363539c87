"""The main job on the embedded digits data, as the lecture tells it.

A 1200-1200 MLP teacher is trained on the full training part; small MLP students are then
trained on a reduced set (a few images per class) alone (``none``) and with vanilla KD,
averaged over seeds. KD from the teacher's soft targets makes up for most of the missing data.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from kdtune.config import TrainConfig
from kdtune.report import epoch_printer, json_ready, print_table, stderr, table_from_rows

TEACHER = TrainConfig(dataset="digits", model="mlp", hidden=(1200, 1200), dropout=0.2,
                      method="none", epochs=30, lr=0.05, batch_size=64, seed=0)
STUDENT = TrainConfig(dataset="digits", model="mlp", hidden=(64,), train_per_class=10,
                      epochs=60, lr=0.05, batch_size=32, alpha=0.1, temperature=4.0)
COLUMNS = ["model", "train_per_class", "method", "params", "val_accuracy", "val_accuracy_sd",
           "test_accuracy", "latency_ms_b1", "latency_ms_b256", "speedup"]


def compare(teacher_path: Path, seeds: int, base: TrainConfig = STUDENT,
            methods: tuple[str, ...] = ("none", "vanilla")) -> list[dict[str, Any]]:
    """Train the student with each method over ``seeds`` seeds; one averaged row per method."""
    from kdtune.resolve import replace_config
    from kdtune.teacher import load_teacher
    from kdtune.trainer import load_data, train

    teacher = load_teacher(teacher_path)
    data = load_data(base)
    rows = []
    for method in methods:
        runs = []
        for seed in range(seeds):
            config = replace_config(base, method=method, seed=seed, teacher=str(teacher_path))
            runs.append(train(config, teacher=teacher, data=data).metrics)
        row: dict[str, Any] = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
        row["val_accuracy_sd"] = statistics.pstdev(r["val_accuracy"] for r in runs)
        row.update(model=f"mlp {'-'.join(map(str, base.hidden or ()))}", method=method,
                   seeds=seeds, train_per_class=base.train_per_class)
        rows.append(row)
    return rows


def run_demo(*, out: str, seeds: int, as_json: bool,
             per_class: tuple[int, ...] = (5, 10)) -> int:
    from kdtune.teacher_store import obtain_teacher

    stderr.print(f"[bold]1/2 teacher[/] MLP 1200-1200 on digits ({TEACHER.epochs} epochs)")
    path, t_metrics, reused = obtain_teacher(TEACHER, out=out, callbacks=[epoch_printer()])
    stderr.print(f"teacher: {path}" + (" (reused)" if reused else ""))
    stderr.print(f"[bold]2/2 students[/] MLP 64 on {', '.join(map(str, per_class))} images "
                 f"per class, none vs vanilla KD, {seeds} seeds each")
    rows = [row for n in per_class
            for row in compare(path, seeds, STUDENT.replace(train_per_class=n))]
    teacher_row = {"model": "mlp 1200-1200 (teacher)", "method": "-", **t_metrics,
                   "train_per_class": "all", "speedup": 1.0}
    print_table(table_from_rows([teacher_row, *rows], COLUMNS,
                                title=f"digits: teacher vs students (mean of {seeds} seeds)"))
    if as_json:
        print(json.dumps({"teacher": json_ready({**t_metrics, "path": str(path)}),
                          "students": [json_ready(r) for r in rows]}))
    return 0
