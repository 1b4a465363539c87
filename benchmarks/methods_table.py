"""The README's digits table of KD methods at their defaults (measured; not run in CI).

Teacher: kdtune demo's MLP 1200-1200 (dropout 0.2, 30 epochs, all training images). Students:
MLP 64 on 10 images per class, 60 epochs, batch 32, alpha 0.1, T 4 (the demo's student), over
3 seeds; each method with its own parameters at their defaults. Prints a markdown table of the
mean and standard deviation of validation and test accuracy.

    .venv/bin/python -m benchmarks.methods_table [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from typing import Any

import torch

from kdtune.demo import STUDENT, TEACHER

#: (row label, changes to the demo's student config); the method parameters not set here keep
#: their defaults. The last row is dkd with mdistiller's warm-up (the table's note).
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("none", {"method": "none"}),
    ("vanilla", {"method": "vanilla"}),
    ("dkd", {"method": "dkd"}),
    ("dist", {"method": "dist"}),
    ("vanilla + LS", {"method": "vanilla", "method_params": {"logit_standardization": True}}),
    ("tf_kd", {"method": "tf_kd"}),
    ("dkd, kd_warmup 20", {"method": "dkd", "kd_warmup": 20}),
]


def measure(seeds: int) -> list[dict[str, Any]]:
    from kdtune.teacher import load_teacher
    from kdtune.teacher_store import obtain_teacher
    from kdtune.trainer import load_data, train

    with tempfile.TemporaryDirectory() as folder:
        path, _, _ = obtain_teacher(TEACHER, out=folder)
        teacher, data = load_teacher(path), load_data(STUDENT)
        out = []
        for label, changes in ROWS:
            runs = [train(STUDENT.replace(**changes, seed=seed, teacher=str(path)),
                          teacher=teacher, data=data, measure_latency=False).metrics
                    for seed in range(seeds)]
            row: dict[str, Any] = {"method": label, "seeds": seeds}
            for key in ("val_accuracy", "test_accuracy"):
                values = [r[key] for r in runs]
                row[key], row[f"{key}_sd"] = statistics.fmean(values), statistics.stdev(values)
            out.append(row)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | val accuracy (sd) | test accuracy (sd) |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['val_accuracy']:.4f} ({r['val_accuracy_sd']:.4f}) | "
              f"{r['test_accuracy']:.4f} ({r['test_accuracy_sd']:.4f}) |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.seeds)
    print(markdown(rows))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
