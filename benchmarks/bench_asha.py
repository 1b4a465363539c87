"""Benchmark 5: ASHA efficiency on digits -- the thesis grid in full vs Optuna TPE + ASHA.

The space is ``benchmarks/spaces/digits_thesis_grid.yaml``: the thesis grid (vanilla,
spherical, rkd_v1..v4, earth_mover x alpha {0.1, 0.3, 0.5} x T {2, 5, 10}, plus
two_temperature x alpha x t_right {2, 5} x t_wrong {10, 20, 50} = 81 configurations) for an
MLP 32 student trained on 10 digits images per class, 27 epochs, distilled from an MLP
1200-1200 teacher trained on every training image. For each seed s in {0, 1, 2}:

* the **grid in full** (no scheduler): all 81 configurations trained to the end with training
  seed s. They are run here with kdtune's own trainer (``kdtune.trainer.train``) on the exact
  ``TrainConfig`` a sweep trial builds (``TrialSettings.config``: device cpu, 1 thread),
  2 processes at a time -- the same numbers a grid sweep gives (the trainer is deterministic
  on CPU; checked below against the TPE trials that ran to the end), without paying Ray's
  per-trial overhead for a reference run whose cost we count in epochs anyway;
* **TPE + ASHA**: ``kdtune search`` (``run_sweep``, a fresh subprocess) of the same space with
  ``sampler: tpe`` (seed s), ASHA (grace 3, reduction 3: rungs at 3 and 9 of 27 epochs,
  ``scheduler.metric: val_loss``) and as many trials as the grid has (81). ASHA ranks by the
  validation loss because on 288 validation images the early accuracy says almost nothing
  about the final one; the benchmark prints both rank correlations, measured on the grid.

Measured: the grid's best final val_accuracy; then, walking through the TPE + ASHA results in
the order the sweep's driver logged them (MLflow timestamps), the epochs trained by all trials
up to the first trial that *finished* (all 27 epochs) within 0.5 accuracy points of that best.
Figure: those epochs / the grid's epochs (81 x 27), mean over the seeds. Target <= 20%.
The same fraction in training seconds is printed beside it.

    .venv/bin/python -m benchmarks.bench_asha [--quick] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.common import SPACES, Result, emit, header, machine, note, scratch
from benchmarks.sweeps import kdtune_cmd, launch, with_teacher

TARGET = 0.20
WITHIN = 0.005  # 0.5 accuracy points
_STATE: dict[str, Any] = {}


def _init_worker(teacher_path: str, data_config: dict[str, Any]) -> None:
    import torch

    from kdtune.resolve import config_from_dict
    from kdtune.teacher import load_teacher
    from kdtune.trainer import load_data

    torch.set_num_threads(1)
    _STATE["data"] = load_data(config_from_dict(data_config))
    _STATE["teacher"] = load_teacher(teacher_path)


def _train_one(config: dict[str, Any]) -> dict[str, Any]:
    from kdtune.resolve import config_from_dict
    from kdtune.trainer import train

    cfg = config_from_dict(config)
    res = train(cfg, data=_STATE["data"], teacher=_STATE["teacher"], measure_latency=False)
    return {"val_accuracy": res.metrics["val_accuracy"], "train_time_s": res.metrics[
        "train_time_s"], "epochs": int(res.metrics["epochs"]),
        "history": [(h["val_accuracy"], h["val_loss"]) for h in res.history]}


def rank_correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rho (Pearson's r of the ranks, ties averaged)."""
    import pandas as pd

    return float(pd.Series(xs).rank().corr(pd.Series(ys).rank()))


def early_signal(grid: list[dict[str, Any]], epochs: Sequence[int]) -> str:
    """How well each rung metric at an early epoch predicts the final val_accuracy."""
    final = [g["val_accuracy"] for g in grid]
    parts = []
    for e in epochs:
        acc = rank_correlation([g["history"][e - 1][0] for g in grid], final)
        loss = rank_correlation([-g["history"][e - 1][1] for g in grid], final)
        parts.append(f"epoch {e}: val_accuracy {acc:.2f}, val_loss {loss:.2f}")
    return "; ".join(parts)


def config_key(c: dict[str, Any]) -> tuple:
    """What tells two configurations of this grid apart."""
    two = c["method"] == "two_temperature"
    return (c["method"], round(float(c["alpha"]), 6),
            None if two else round(float(c["temperature"]), 6),
            round(float(c["t_right"]), 6) if two else None,
            round(float(c["t_wrong"]), 6) if two else None)


def run_grid(space_file: Path, teacher: Path, seed: int) -> list[dict[str, Any]]:
    from kdtune.tune.space import DATA_KEYS, expand_grid, load_space
    from kdtune.tune.trainable import TrialSettings

    space = load_space(space_file)
    settings = TrialSettings(fixed=dict(space.fixed), seeds=(seed,), teacher_path=str(teacher),
                             overrides={"device": "cpu", "threads": 1})
    configs = [settings.config(p, seed).to_dict() for p in expand_grid(space)]
    data_config = {k: space.fixed[k] for k in DATA_KEYS if k in space.fixed}
    with ProcessPoolExecutor(2, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(str(teacher), data_config)) as pool:
        out = list(pool.map(_train_one, configs))
    for c, o in zip(configs, out, strict=True):
        o["key"] = config_key(c)
    return out


def reach(trials: list[dict[str, Any]], best: float, max_t: int) -> dict[str, Any]:
    """Walk the sweep's results in the order the driver logged them; count epochs (and the
    training seconds of those epochs) until the first finished trial within WITHIN of best."""
    elapsed = {}
    for t in trials:
        prev = 0.0
        for r in t["history"]:
            elapsed[(t["trial_id"], r["epoch"])] = r["elapsed_s"] - prev
            prev = r["elapsed_s"]
    events = sorted((ts, step, val, t["trial_id"]) for t in trials
                    for step, val, ts in t["mlflow_history"])
    epochs, seconds, started = 0, 0.0, set()
    for _ts, step, val, tid in events:
        epochs += 1
        seconds += elapsed.get((tid, int(step)), 0.0)
        started.add(tid)
        if int(step) == max_t and val >= best - WITHIN - 1e-9:
            return {"reached": True, "epochs": epochs, "seconds": seconds,
                    "trials_started": len(started), "value": val}
    return {"reached": False, "epochs": epochs, "seconds": seconds,
            "trials_started": len(started), "value": None}


def one_seed(seed: int, tmp: Path, *, quick: bool) -> dict[str, Any]:
    from kdtune.runs import decode_param

    epochs, grace = (9, 1) if quick else (27, 3)
    fixed = {"epochs": epochs, "seeds": [seed]}
    grid_file, teacher = with_teacher(SPACES / "digits_thesis_grid.yaml", tmp,
                                      fixed=fixed, name=f"grid_s{seed}",
                                      teacher_changes={"train_per_class": None})
    grid = run_grid(grid_file, teacher, seed)
    best = max(g["val_accuracy"] for g in grid)
    grid_epochs = sum(g["epochs"] for g in grid)
    grid_seconds = sum(g["train_time_s"] for g in grid)
    n = 24 if quick else len(grid)
    tpe_file, _ = with_teacher(SPACES / "digits_thesis_grid.yaml", tmp,
                               fixed=fixed, name=f"tpe_s{seed}",
                               search={"sampler": "tpe", "seed": seed, "num_samples": n},
                               scheduler={"type": "asha", "metric": "val_loss",
                                          "grace_period": grace, "reduction_factor": 3},
                               teacher_changes={"train_per_class": None})
    store = tmp / f"tpe_s{seed}"
    res = launch(kdtune_cmd(tpe_file, store, "tpe"), store, timeout=3600)
    trials = res["trials"]
    r = reach(trials, best, epochs)
    total_epochs = sum(len(t["mlflow_history"]) for t in trials)
    # consistency: a TPE trial that ran to the end scores what the grid scored for its config
    by_key = {g["key"]: g["val_accuracy"] for g in grid}
    same = total = 0
    for t in trials:
        if t["epochs"] == epochs:
            params = {k: decode_param(v) for k, v in t["params"].items()}
            total += 1
            same += abs(by_key.get(config_key(params), -1) - t["history"][-1]["val_accuracy"]
                        ) < 1e-9
    # did TPE propose the near-best configurations, and how far did ASHA let them train?
    near_keys = {g["key"] for g in grid if g["val_accuracy"] >= best - WITHIN - 1e-9}
    near_runs = [t["epochs"] for t in trials if config_key(
        {k: decode_param(v) for k, v in t["params"].items()}) in near_keys]
    (tmp / f"grid_s{seed}.json").write_text(json.dumps(grid, default=list))
    frac = r["epochs"] / grid_epochs if r["reached"] else math.inf
    frac_s = r["seconds"] / grid_seconds if r["reached"] else math.inf
    distinct = len({config_key({k: decode_param(v) for k, v in t["params"].items()})
                    for t in trials})
    near = sum(g["val_accuracy"] >= best - WITHIN - 1e-9 for g in grid)
    note(f"seed {seed}: rank correlation (Spearman) with the final val_accuracy over the grid, "
         f"at the rungs -- {early_signal(grid, [grace, grace * 3])}")
    note(f"seed {seed}: grid best val_accuracy {best:.4f} ({near} of {len(grid)} configs within "
         f"0.5 points of it; grid {grid_epochs} epochs, {grid_seconds:.1f} s training); "
         + (f"TPE+ASHA reached {r['value']:.4f} after {r['epochs']} epochs = {100 * frac:.1f}% "
            f"({100 * frac_s:.1f}% of the grid's training seconds), {r['trials_started']} "
            f"trials started" if r["reached"] else
            f"TPE+ASHA did not get within 0.5 points in {len(trials)} trials "
            f"({r['epochs']} epochs = {100 * r['epochs'] / grid_epochs:.1f}% of the grid)")
         + f"; whole sweep {total_epochs} epochs ({100 * total_epochs / grid_epochs:.1f}%), "
         f"{distinct} distinct configs in {len(trials)} trials, sweep wall {res['wall_s']:.0f} "
         f"s; grid == sweep on {same}/{total} finished trials; trials of near-best configs: "
         f"{len(near_runs)} (epochs each: {sorted(near_runs) or '-'})")
    return {"seed": seed, "fraction": frac, "fraction_seconds": frac_s, "best": best,
            "reach": r, "total_epochs": total_epochs, "grid_epochs": grid_epochs,
            "consistent": (same, total)}


def run(quick: bool = False, seeds: Sequence[int] | None = None, keep: bool = False
        ) -> list[Result]:
    header("5. ASHA efficiency on digits: thesis grid in full vs TPE + ASHA")
    note(machine())
    seeds = list(seeds) if seeds is not None else ([0] if quick else [0, 1, 2])
    per_seed = []
    with scratch("asha", keep=keep) as tmp:
        for s in seeds:
            per_seed.append(one_seed(s, tmp, quick=quick))
    fracs = [p["fraction"] for p in per_seed]
    mean = statistics.fmean(fracs) if all(math.isfinite(f) for f in fracs) else math.inf
    return [emit(Result(
        f"asha[digits thesis grid, {len(seeds)} seed(s)]", mean, "<=", TARGET, unit="%",
        raw=("per seed " + ", ".join(f"{100 * f:.1f}%" if math.isfinite(f) else "not reached"
                                     for f in fracs)
             + "; in training seconds " + ", ".join(
                 f"{100 * p['fraction_seconds']:.1f}%" if math.isfinite(p["fraction_seconds"])
                 else "-" for p in per_seed)),
        extra={"per_seed": per_seed}))]


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 9 epochs (ASHA grace 1), 24 TPE trials")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    return run(args.quick, args.seeds, args.keep)


if __name__ == "__main__":
    main()
