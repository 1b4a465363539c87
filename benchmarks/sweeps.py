"""Helpers for the sweep benchmarks (3a, 3b, 5): run kdtune sweeps in fresh subprocesses and
read back what each trial trained (MLflow child runs + Ray's per-trial ``result.json``).

A child process is ``python -m benchmarks.sweeps SPACE --store DIR --name NAME --json OUT``:
it runs :func:`kdtune.tune.sweep.run_sweep` into its own SQLite MLflow store and Ray storage
under ``DIR``, notes the wall-clock time when ``run_sweep`` returned, then collects the trials
and writes everything to ``OUT`` (collection happens after the clock stopped).
"""

from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.common import REPO, python  # noqa: E402


def sqlite_uri(store: Path) -> str:
    return f"sqlite:///{(store / 'mlflow.db').resolve()}"


def with_teacher(template: Path, out_dir: Path, *, fixed: dict[str, Any] | None = None,
                 search: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None,
                 name: str | None = None, teacher_changes: dict[str, Any] | None = None
                 ) -> tuple[Path, Path]:
    """Train the template's teacher once (outside any timing; reused when the same config
    was trained into ``out_dir/teachers`` before) and write a copy of the space that names it
    by path, with the given changes. Returns ``(space file, teacher file)``.

    The teacher's fingerprint covers dataset, split_seed and val_fraction but not
    train_per_class, so a teacher trained on all images serves students trained on a few."""
    import yaml

    from kdtune.teacher_store import obtain_teacher
    from kdtune.tune.space import load_space, teacher_config

    space = load_space(template)
    raw = yaml.safe_load(template.read_text())
    if fixed:
        raw["fixed"].update(fixed)
    if search:
        raw["search"].update(search)
    if scheduler is not None:
        raw["scheduler"] = scheduler
    if name:
        raw["name"] = name
    cfg = teacher_config(space)
    assert cfg is not None
    if teacher_changes:  # e.g. train_per_class=None: the teacher sees every training image
        cfg = cfg.replace(**teacher_changes)
    teacher, _, _ = obtain_teacher(cfg, out=out_dir / "teachers")
    raw["teacher"] = {"path": str(teacher)}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{raw.get('name', template.stem)}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, teacher


def warm_mlflow_template(folder: Path) -> Path:
    """Build kdtune's empty MLflow store template (``kdtune.sqlite_store``) in ``folder``,
    outside any timing, as any earlier kdtune run on the machine would have; returns the
    folder to pass as ``launch(..., mlflow_template=...)``."""
    from kdtune.sqlite_store import create_sqlite_store

    previous = os.environ.get("KDTUNE_CACHE")
    os.environ["KDTUNE_CACHE"] = str(folder)
    try:
        create_sqlite_store(folder / "scratch" / "mlflow.db")
    finally:
        if previous is None:
            del os.environ["KDTUNE_CACHE"]
        else:
            os.environ["KDTUNE_CACHE"] = previous
    return folder / "mlflow"


def launch(cmd: list[str], store: Path, *, timeout: float,
           mlflow_template: Path | None = None) -> dict[str, Any]:
    """Run one child in a fresh process; its JSON output plus ``wall_s`` measured from the
    launch (interpreter start and imports included) to the moment the sweep returned.

    The child's ``KDTUNE_CACHE`` is its own, empty folder (teacher outputs are computed
    afresh); with ``mlflow_template`` its ``mlflow/`` subfolder is that (built) template."""
    store.mkdir(parents=True, exist_ok=True)
    out = store / "child.json"
    log = store / "child.log"
    cache = store / "cache"
    if mlflow_template is not None:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "mlflow").symlink_to(mlflow_template, target_is_directory=True)
    env = {**os.environ, "KDTUNE_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    t_launch = time.time()
    with log.open("w") as f:
        proc = subprocess.run([*cmd, "--json", str(out)], cwd=REPO, env=env, stdout=f,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
    t_exit = time.time()
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"child {cmd[2:4]} failed (exit {proc.returncode}); log tail:\n{tail}")
    res = json.loads(out.read_text())
    res["t_launch"], res["t_exit"] = t_launch, t_exit
    res["wall_s"] = res["t_done"] - t_launch
    res["log"] = str(log)
    return res


def kdtune_cmd(space: Path, store: Path, name: str) -> list[str]:
    return [python(), "-m", "benchmarks.sweeps", str(space), "--store", str(store),
            "--name", name]


def ray_results(experiment_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every result each trial reported, by trial id (Ray's ``result.json``, one per line)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for file in sorted(experiment_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        if rows:
            out[str(rows[-1]["trial_id"])] = rows
    return out


def collect(name: str, store: Path) -> dict[str, Any]:
    """Per trial: MLflow status, train_time_s (MLflow; else the last ``elapsed_s`` Ray recorded,
    for trials ASHA stopped), trainer_s (time in the trainer, from Ray), epochs, start/end
    (driver clock, MLflow), params, the per-epoch results Ray recorded and the val_accuracy
    history MLflow logged (with the driver's millisecond timestamps: the order in which the
    sweep saw the results)."""
    from kdtune.tracking import Tracker
    from kdtune.tune.trainable import TRAINER_KEY

    tracker = Tracker(sqlite_uri(store))
    frame = tracker.trial_runs(name)
    ray = ray_results(store / "ray" / name)
    trials = []
    for _, row in frame.iterrows():
        tid = str(row["trial_id"])
        rows = ray.get(tid, [])
        mlflow_t = row.get("metrics.train_time_s")
        has_mlflow = mlflow_t is not None and mlflow_t == mlflow_t  # not NaN
        ray_t = float(rows[-1]["elapsed_s"]) if rows and "elapsed_s" in rows[-1] else None
        trainer_t = rows[-1].get(TRAINER_KEY) if rows else None
        trials.append({
            "trial_id": tid, "status": row["status"],
            "train_time_s": float(mlflow_t) if has_mlflow else ray_t,
            "train_time_source": "mlflow" if has_mlflow else "ray elapsed_s",
            "trainer_s": float(trainer_t) if trainer_t is not None else None,
            "epochs": int(rows[-1]["epoch"]) if rows else 0,
            "start": row["start_time"].timestamp(), "end": row["end_time"].timestamp(),
            "params": {k[len("params."):]: v for k, v in row.items()
                       if k.startswith("params.") and v == v},
            "mlflow_history": sorted(
                (m.step, m.value, m.timestamp / 1000.0)
                for m in tracker.client.get_metric_history(row["run_id"], "val_accuracy")),
            "history": [{"epoch": int(r["epoch"]), "val_accuracy": float(r["val_accuracy"]),
                         "elapsed_s": float(r.get("elapsed_s", 0.0)),
                         "timestamp": float(r.get("timestamp", 0.0))} for r in rows],
        })
    return {"trials": trials}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one kdtune sweep in this process, timed")
    parser.add_argument("space")
    parser.add_argument("--store", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    from rich.console import Console

    from kdtune.tune.sweep import run_sweep

    store = Path(args.store).resolve()
    t_call = time.time()
    run_sweep(args.space, name=args.name, mlflow_uri=sqlite_uri(store),
              storage=str(store / "ray"), console=Console(file=sys.stdout, highlight=False))
    t_done = time.time()
    out = {"side": "kdtune", "t_start": T_START, "t_call": t_call, "t_done": t_done,
           **collect(args.name, store)}
    trials = out["trials"]
    out["trials_n"] = len(trials)
    out["train_time_sum"] = sum(t["train_time_s"] or 0.0 for t in trials)
    Path(args.json).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
