"""Benchmark 3: sweep overhead.

**3a** -- the same 16-trial digits sweep (``benchmarks/spaces/digits_quick.yaml`` = the shipped
``digits_quick``: TPE + ASHA, 15 epochs, 2 trials at a time) run by kdtune (``run_sweep``) and
by the hand-written baseline (``benchmarks/baseline_sweep.py``: Tuner + OptunaSearch + ASHA +
MLflowLoggerCallback, each trial loading digits and the teacher itself and running the teacher
live). Each run is a fresh subprocess with its own MLflow SQLite store and Ray storage in a
scratch folder; the sides alternate (kdtune, baseline, baseline, kdtune, ...). The teacher is
trained once beforehand and both get the same checkpoint. Wall time = from launching the
process (interpreter start and imports included) to the moment the sweep call returned.
Target: kdtune <= 0.30x the baseline. Per-trial overhead, for both, =
(wall - sum of the trials' own training times) / trials; kdtune's training times are MLflow's
``train_time_s`` (for ASHA-stopped trials, which have none there, the last ``elapsed_s`` the
trial reported to Ray); the baseline's trials time their own loop. As in 3b, kdtune's empty
MLflow store template is built before the timing (as by any earlier kdtune run on the machine);
one more kdtune run without it (a machine's very first run, paying MLflow's migrations) is
printed apart.

**3b** -- a compute-dominated kdtune sweep (``benchmarks/spaces/synthetic_resnet8.yaml``:
ResNet-8 students, CIFAR-shaped synthetic data, ~20 s of training per trial, 16 trials 2 at a
time, no scheduler): wall vs the ideal = sum of trainer times / 2 parallel slots, a trial's
trainer time being what it spent in kdtune's trainer (building its run, the epochs with their
validation, the final metrics: what the trainer alone takes for that config), reported by the
trial as ``trainer_s``. Target <= 1.15x. Also printed: the stricter ratio against the training
loops alone (``train_time_s``), which counts validation and final metrics as overhead. Beside
it: where the rest goes (start-up before the first trial, the trials phase, after the last
trial; each trial's own time outside its training loop) and the model ``wall = start-up + ideal
+ trials/slots x per-trial overhead`` fitted to the run, so the ratio can be read off for other
sweep sizes. kdtune's empty MLflow store template is built before the timing (as by any earlier
kdtune run on the machine); the teacher outputs cache starts empty.

    .venv/bin/python -m benchmarks.bench_sweep [--quick] [--only 3a|3b] [--repeats N]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import SPACES, Result, emit, header, machine, median, note, python, scratch
from benchmarks.sweeps import kdtune_cmd, launch, sqlite_uri, warm_mlflow_template, with_teacher

TARGET_3A = 0.30
TARGET_3B = 1.15


def baseline_cmd(teacher: Path, store: Path, num_samples: int, epochs: int) -> list[str]:
    return [python(), "-m", "benchmarks.baseline_sweep", "--teacher", str(teacher),
            "--storage", str(store / "ray"), "--mlflow-uri", sqlite_uri(store),
            "--num-samples", str(num_samples), "--epochs", str(epochs)]


def per_trial_overhead(res: dict[str, Any]) -> float:
    n = res.get("trials_n", res.get("trials"))
    return (res["wall_s"] - res["train_time_sum"]) / n


def sweep_3a(quick: bool, repeats: int, keep: bool) -> Result:
    num_samples, epochs = (4, 15) if quick else (16, 15)
    with scratch("sweep3a", keep=keep) as tmp:
        space, teacher = with_teacher(SPACES / "digits_quick.yaml", tmp,
                                      search={"num_samples": num_samples})
        template = warm_mlflow_template(tmp / "template-cache")
        runs: dict[str, list[dict[str, Any]]] = {"kdtune": [], "baseline": []}
        for rep in range(repeats):
            order = ("kdtune", "baseline") if rep % 2 == 0 else ("baseline", "kdtune")
            for side in order:
                store = tmp / f"{side}-{rep}"
                cmd = (kdtune_cmd(space, store, "digits") if side == "kdtune"
                       else baseline_cmd(teacher, store, num_samples, epochs))
                res = launch(cmd, store, timeout=1800,
                             mlflow_template=template if side == "kdtune" else None)
                runs[side].append(res)
                n = res.get("trials_n", res.get("trials"))
                note(f"{side} run {rep + 1}: wall {res['wall_s']:.1f} s, {n} trials, "
                     f"sum of trial training {res['train_time_sum']:.2f} s, per-trial overhead "
                     f"{per_trial_overhead(res):.2f} s")
        kd, base = runs["kdtune"], runs["baseline"]
        wall_kd = median([r["wall_s"] for r in kd])
        wall_base = median([r["wall_s"] for r in base])
        result = emit(Result(
            f"sweep_3a[digits {num_samples} trials]", wall_kd / wall_base, "<=", TARGET_3A,
            raw=(f"kdtune {wall_kd:.1f} s vs baseline {wall_base:.1f} s wall (median of "
                 f"{repeats}); per-trial overhead kdtune "
                 f"{median([per_trial_overhead(r) for r in kd]):.2f} s, baseline "
                 f"{median([per_trial_overhead(r) for r in base]):.2f} s"),
            extra={"kdtune": kd, "baseline": base}))
        describe_kdtune(kd[-1])
        cold = launch(kdtune_cmd(space, tmp / "kdtune-cold", "digits"), tmp / "kdtune-cold",
                      timeout=1800)
        note(f"kdtune's first run on a machine (no MLflow store template yet: MLflow's "
             f"migrations run once): wall {cold['wall_s']:.1f} s = "
             f"{cold['wall_s'] / wall_base:.2f}x the baseline's median")
        result.extra["kdtune_cold"] = cold
        last = base[-1]
        note(f"baseline, last run: launch -> Tuner.fit {last['t_fit'] - last['t_launch']:.1f} s, "
             f"fit {last['t_done'] - last['t_fit']:.1f} s; epochs trained "
             f"{sum(last['epochs'])}")
    return result


def describe_kdtune(res: dict[str, Any]) -> None:
    """Where a kdtune sweep's wall time went (driver clock)."""
    trials = res["trials"]
    first = min(t["start"] for t in trials)
    last = max(t["end"] for t in trials)
    inside = [(t["end"] - t["start"]) - (t["train_time_s"] or 0.0) for t in trials]
    outside = [(t["end"] - t["start"]) - t["trainer_s"] for t in trials if t["trainer_s"]]
    sources = sorted({t["train_time_source"] for t in trials})
    note(f"kdtune, last run: launch -> run_sweep {res['t_call'] - res['t_launch']:.1f} s "
         f"(imports), run_sweep -> first trial {first - res['t_call']:.1f} s (store, data, "
         f"teacher, Ray start), trials phase {last - first:.1f} s, after the last trial "
         f"{res['t_done'] - last:.1f} s; per trial, time not training (setup, eval, "
         f"checkpoints, reports, final metrics) median {median(inside):.2f} s, time outside "
         f"the trainer (checkpoints, reports) median {median(outside) if outside else 0:.2f} s; "
         f"epochs trained {sum(t['epochs'] for t in trials)}; train times from {sources}")


def sweep_3b(quick: bool, keep: bool, epochs: int | None) -> Result:
    fixed = {"epochs": epochs or (1 if quick else 8)}
    search = {"num_samples": 2 if quick else 16}
    with scratch("sweep3b", keep=keep) as tmp:
        space, _ = with_teacher(SPACES / "synthetic_resnet8.yaml", tmp, fixed=fixed,
                                search=search)
        template = warm_mlflow_template(tmp / "template-cache")
        res = launch(kdtune_cmd(space, tmp / "kdtune", "synthetic"), tmp / "kdtune",
                     timeout=3600, mlflow_template=template)
    trials = res["trials"]
    slots = 2
    trainer = [t["trainer_s"] or t["train_time_s"] for t in trials]
    train = [t["train_time_s"] for t in trials]
    ideal = sum(trainer) / slots
    loop_ideal = sum(train) / slots
    first = min(t["start"] for t in trials)
    last = max(t["end"] for t in trials)
    result = emit(Result(
        f"sweep_3b[resnet8 synthetic {len(trials)} trials]", res["wall_s"] / ideal, "<=",
        TARGET_3B,
        raw=(f"wall {res['wall_s']:.1f} s vs ideal {ideal:.1f} s = sum of trainer times "
             f"{sum(trainer):.1f} s / {slots} slots; per trial in the trainer "
             f"{', '.join(f'{t:.1f}' for t in trainer)} s"),
        extra={"run": res}))
    note(f"stricter ideal, training loops only (sum of train_time_s {sum(train):.1f} s / "
         f"{slots}, no validation or final metrics): wall {res['wall_s'] / loop_ideal:.2f}x")
    note(f"trials phase alone (first trial start -> last trial end): {last - first:.1f} s = "
         f"{(last - first) / ideal:.2f}x ideal")
    startup = first - res["t_launch"]
    per_trial = ((last - first) - ideal) * slots / len(trials)
    typical = median(trainer)
    note(f"model: wall = start-up {startup:.1f} s + ideal + trials / {slots} x {per_trial:.2f} s "
         f"per trial; so at n trials of {typical:.1f} s: wall/ideal = 1 + "
         f"{per_trial / typical:.3f} + {startup * slots / typical:.1f} / n "
         f"(n=4: {1 + per_trial / typical + startup * slots / typical / 4:.2f}x, "
         f"n=64: {1 + per_trial / typical + startup * slots / typical / 64:.2f}x)")
    describe_kdtune(res)
    return result


def run(quick: bool = False, only: str | None = None, repeats: int | None = None,
        keep: bool = False, epochs_3b: int | None = None) -> list[Result]:
    header("3. sweep overhead: kdtune vs a hand-written Ray Tune sweep; compute-dominated sweep")
    note(machine())
    results = []
    if only in (None, "3a"):
        results.append(sweep_3a(quick, repeats or (1 if quick else 2), keep))
    if only in (None, "3b"):
        results.append(sweep_3b(quick, keep, epochs_3b))
    return results


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3a with 4 trials, 3b with 2 one-epoch trials")
    parser.add_argument("--only", choices=["3a", "3b"])
    parser.add_argument("--repeats", type=int, help="3a runs per side (default 2; quick 1)")
    parser.add_argument("--epochs-3b", type=int, help="epochs per 3b trial (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders")
    args = parser.parse_args(argv)
    return run(args.quick, args.only, args.repeats, args.keep, args.epochs_3b)


if __name__ == "__main__":
    main()
