"""The README's digits tables of KD methods at their defaults (measured; not run in CI).

Teacher: kdtune demo's MLP 1200-1200 (dropout 0.2, 30 epochs, all training images). Students:
MLP 64 on 10 images per class, 60 epochs, batch 32, alpha 0.1, T 4 (the demo's student), over
3 seeds; each method with its own parameters at their defaults. Prints a markdown table of the
mean and standard deviation of validation and test accuracy. ``--kinds``: the feature and
relation terms (feature_method) alone (method none) and with vanilla, at their defaults, with
each row's training seconds per run, and a line setting the cost of a feature trial (teacher
features: live stage outputs for fitnet/sp, cached embeddings for relational/pkt) against the
cached-logit vanilla trial of the same pair. That cost line is also ``make bench``'s
benchmark 6 (:func:`run`).

    .venv/bin/python -m benchmarks.methods_table [--seeds 3] [--kinds] [--json]
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

#: The feature/relation terms on the MLP pair (at needs conv feature maps), alone and with
#: vanilla, at their defaults.
KIND_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("none", {"method": "none"}),
    ("vanilla", {"method": "vanilla"}),
    ("dml (2 peers, no teacher)", {"method": "dml"}),
    *[(f"{prefix}{name}", {"method": method, "feature_method": name})
      for name in ("fitnet", "sp", "relational", "pkt", "crd")
      for prefix, method in (("", "none"), ("vanilla + ", "vanilla"))],
]


#: The feature terms the cost line compares, each added to vanilla.
FEATURES = ("fitnet", "sp", "relational", "pkt", "crd")
#: Bound on a feature trial's training seconds over a cached-logit vanilla trial: a sanity
#: bound (a live teacher pass per batch, as fitnet and sp need, costs a few times more).
COST_BOUND = 8.0


def run(quick: bool = False) -> list[Any]:
    """Benchmark 6: the training seconds per run of vanilla plus each feature term against
    vanilla with cached logits, the same MLP pair, side by side (1 seed when ``quick``)."""
    from benchmarks.common import Result, emit, note

    print("\n== 6. cost of a feature trial vs a cached-logit trial (MLP pair, digits) ==")
    rows = [row for row in KIND_ROWS if row[0] in
            ("vanilla", *(f"vanilla + {name}" for name in FEATURES))]
    seeds = 1 if quick else 3
    seconds = {r["method"]: r["train_time_s"] for r in measure(seeds, rows)}
    base = seconds["vanilla"]
    note(f"vanilla with cached logits: {base:.2f} s per run (mean of {seeds} seed(s))")
    return [emit(Result(f"feature_cost[{name}]", seconds[f"vanilla + {name}"] / base, "<=",
                        COST_BOUND, raw=f"{seconds[f'vanilla + {name}']:.2f} s vs {base:.2f} s"))
            for name in FEATURES]


def measure(seeds: int, rows: list[tuple[str, dict[str, Any]]] = ROWS) -> list[dict[str, Any]]:
    from kdtune.teacher import load_teacher
    from kdtune.teacher_store import obtain_teacher
    from kdtune.trainer import load_data, train

    with tempfile.TemporaryDirectory() as folder:
        path, _, _ = obtain_teacher(TEACHER, out=folder)
        teacher, data = load_teacher(path), load_data(STUDENT)
        out = []
        for label, changes in rows:
            runs = [train(STUDENT.replace(**changes, seed=seed, teacher=str(path)),
                          teacher=teacher, data=data, measure_latency=False).metrics
                    for seed in range(seeds)]
            row: dict[str, Any] = {"method": label, "seeds": seeds}
            for key in ("val_accuracy", "test_accuracy"):
                values = [r[key] for r in runs]
                row[key], row[f"{key}_sd"] = statistics.fmean(values), statistics.stdev(values)
            row["train_time_s"] = statistics.fmean(r["train_time_s"] for r in runs)
            out.append(row)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | val accuracy (sd) | test accuracy (sd) |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['val_accuracy']:.4f} ({r['val_accuracy_sd']:.4f}) | "
              f"{r['test_accuracy']:.4f} ({r['test_accuracy_sd']:.4f}) |" for r in rows]
    return "\n".join(lines)


def kinds_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| logit term + feature term | val accuracy (sd) | test accuracy (sd) | "
             "train s/run |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['val_accuracy']:.4f} ({r['val_accuracy_sd']:.4f}) | "
              f"{r['test_accuracy']:.4f} ({r['test_accuracy_sd']:.4f}) | "
              f"{r['train_time_s']:.2f} |" for r in rows]
    by = {r["method"]: r["train_time_s"] for r in rows}
    base = by["vanilla"]
    lines.append("")
    lines.append("cost per trial against vanilla with cached logits ("
                 f"{base:.2f} s): " + ", ".join(
                     f"{name} {by[f'vanilla + {name}'] / base:.2f}x"
                     for name in ("fitnet", "sp", "relational", "pkt", "crd")))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--kinds", action="store_true",
                        help="the feature and relation terms, alone and with vanilla")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.seeds, KIND_ROWS if args.kinds else ROWS)
    print(kinds_markdown(rows) if args.kinds else markdown(rows))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
