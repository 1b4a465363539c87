"""Every fault of ``tests/faults``, with more repetitions, and a table of what survived.

    .venv/bin/python -m benchmarks.faults                  # ~30 minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.faults --kills 10 --outage 60 --reps 2
    .venv/bin/python -m benchmarks.faults --only worker driver

Each fault is injected into real processes (``tests/faults/harness.py``): a Ray worker of a
running trial SIGKILLed, the driver SIGKILLed (with its local Ray) at random moments of its
run -- start-up, teacher training, trials running, the final report -- and started again, the
``mlflow server`` of ``cluster/local`` and a PostgreSQL study database stopped mid-sweep and
started again, Ctrl-C once and twice, two drivers at once, and bad input. After each, the
sweep's record is held against what ``num_samples`` trials must leave
(:func:`~tests.faults.harness.check_record`): a repetition survived when the sweep finished
with one child run per trial, every epoch once, the parent FINISHED (and, for the trial
faults, the fault handled as it must be). The table counts runs lost (trials without an ended
run) and runs duplicated (child runs or epochs beyond one each).

The exit code is 0 whatever survived: a benchmark reports, it does not gate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.harness import (  # run from the repository root: `python -m benchmarks...`
    DIVERGING_LR,
    GOOD_LR,
    Driver,
    MlflowServer,
    Postgres,
    check_record,
    kdtune_env,
    kill_a_trial_worker,
    postgres_bin,
    postgres_dir,
    ray_temp,
    results_of,
    trial_faults_space,
    write_space,
)

FIXED = {"dataset": "digits", "model": "mlp", "batch_size": 32, "seeds": [0]}
TEACHER = {"model": "mlp", "hidden": [64], "epochs": 6, "lr": 0.05}


@dataclass
class Row:
    fault: str
    repetitions: int = 0
    survived: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, survived: bool, lost: int = 0, duplicated: int = 0, note: str = "") -> None:
        self.repetitions += 1
        self.survived += int(survived)
        self.lost += lost
        self.duplicated += duplicated
        if note and not survived:
            self.notes.append(note)


class Bench:
    """A working folder, the session teacher and a store template shared by the faults."""

    def __init__(self, root: Path) -> None:
        self.root = root
        os.environ.setdefault("KDTUNE_CACHE", str(root / "cache"))
        from kdtune.config import TrainConfig
        from kdtune.sqlite_store import create_sqlite_store, template_path
        from kdtune.teacher_store import obtain_teacher

        if not template_path().is_file():
            create_sqlite_store(root / "first" / "mlflow.db")
        self.teacher, _, _ = obtain_teacher(
            TrainConfig(dataset="digits", model="mlp", hidden=(128,), method="none", epochs=8,
                        batch_size=64, lr=0.05, seed=0, device="cpu"), out=root / "teachers")
        self.count = 0

    def folder(self, name: str) -> Path:
        self.count += 1
        path = self.root / f"{self.count:02d}-{name}"
        path.mkdir(parents=True)
        return path


def store_flags(folder: Path) -> tuple[str, str, list[str]]:
    store = folder / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    return uri, f"sqlite:///{store / 'optuna.db'}", ["--mlflow-uri", uri, "--storage",
                                                     str(store / "ray")]


# -- the faults --------------------------------------------------------------------------------
def worker_and_nan(bench: Bench, worker: Row, nan: Row) -> None:
    """A sweep of 3 trials (one diverges): the worker of a running trial is SIGKILLed."""
    folder = bench.folder("worker")
    epochs = 24
    space = trial_faults_space(folder, bench.teacher, "worker", epochs)
    uri, study, flags = store_flags(folder)
    with ray_temp() as tmp:
        driver = Driver(["search", str(space), *flags], folder, kdtune_env(tmp),
                        folder / "search.log", tmp)
        killed = None
        try:
            deadline = time.monotonic() + 300
            while killed is None and driver.running() and time.monotonic() < deadline:
                killed = kill_a_trial_worker(folder / "store" / "ray", GOOD_LR, epochs)
                time.sleep(0.05)
            code = driver.finish(timeout=600)
        finally:
            driver.cleanup()
    verdict = check_record(uri, study, "worker", 3, epochs)
    from kdtune.tracking import Tracker

    runs = Tracker(uri).trial_runs("worker").set_index("trial_id")
    trial = killed["folder"].removeprefix("trial_") if killed else None
    retried = trial is not None and trial in runs.index and \
        runs.loc[trial].get("tags.kdtune.retries") == "1" and \
        runs.loc[trial, "status"] == "FINISHED"
    worker.add(code == 0 and verdict.survived and retried, verdict.lost, verdict.duplicated,
               "; ".join(verdict.problems) or f"exit {code}, retried {retried}")
    failed = runs[runs["params.lr"] == json.dumps(DIVERGING_LR)]
    once = len(failed) == 1 and failed.iloc[0]["status"] == "FAILED" and \
        len({r["pid"] for r in results_of(folder / "store" / "ray")[
            f"trial_{failed.index[0]}"]}) == 1
    nan.add(once, 0, 0, "the diverging trial was not failed once")


def kill_driver(bench: Bench, row: Row, rng: random.Random) -> None:
    """One sweep; the driver SIGKILLed once at a random moment, then resumed (or, killed
    before it registered the sweep, searched again) until it finishes."""
    from tests.faults.harness import epochs_logged, trials_ended

    folder = bench.folder("driver")
    samples, epochs = 4, 4
    space = write_space(folder, TEACHER, name="killed", fixed={**FIXED, "epochs": epochs},
                        search={"num_samples": samples, "max_concurrent": 2, "sampler": "tpe",
                                "seed": rng.randrange(100)})
    uri, study, flags = store_flags(folder)
    moment = rng.choice(["start-up", "teacher", "trials", "trials", "final report"])
    conditions: dict[str, tuple[Callable[[], bool], float]] = {}
    with ray_temp() as tmp:
        env = kdtune_env(tmp)
        driver = Driver(["search", str(space), *flags], folder, env, folder / "run-0.log", tmp)
        conditions = {
            "start-up": (lambda: True, 5.0),
            "teacher": (lambda: "training the teacher" in driver.output, 2.0),
            "trials": (lambda: epochs_logged(uri, "killed") > 0, 6.0),
            "final report": (lambda: trials_ended(uri, "killed") >= samples, 0.5)}
        condition, delay = conditions[moment]
        try:
            deadline = time.monotonic() + 300
            while driver.running() and not condition() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(rng.uniform(0, delay))
            driver.kill()
        finally:
            driver.cleanup()
        from kdtune.tracking import Tracker

        registered = (folder / "store" / "mlflow.db").exists() and \
            Tracker(uri).find_sweep("killed") is not None
        argv = ["resume", "killed", *flags] if registered else ["search", str(space), *flags]
        last = Driver(argv, folder, env, folder / "run-1.log", tmp)
        code = last.finish(timeout=600)
    verdict = check_record(uri, study, "killed", samples, epochs)
    clean = "Traceback" not in driver.output + last.output
    row.add(code == 0 and verdict.survived and clean, verdict.lost, verdict.duplicated,
            f"{moment}: " + ("; ".join(verdict.problems) or f"exit {code}"))


def outage(bench: Bench, row: Row, seconds: float, which: str) -> None:
    """The MLflow server or the PostgreSQL study database stopped ``seconds`` mid-sweep."""
    folder = bench.folder(f"outage-{which}")
    epochs = 6
    space = write_space(folder, bench.teacher, name="outage", fixed={**FIXED, "epochs": epochs},
                        search={"num_samples": 3, "max_concurrent": 2, "sampler": "tpe",
                                "seed": 2})
    mlflow = MlflowServer(folder / "mlflow-server")
    mlflow.start()
    pg: Postgres | None = None
    try:
        with postgres_dir() as pg_folder, ray_temp() as tmp:
            pg = Postgres(pg_folder)
            pg.init()
            flags = ["--mlflow-uri", mlflow.uri, "--storage", str(folder / "ray"),
                     "--study-storage", pg.url]
            driver = Driver(["search", str(space), *flags], folder, kdtune_env(tmp),
                            folder / "search.log", tmp)
            from tests.faults.harness import epochs_logged

            try:
                driver.wait_for(lambda: epochs_logged(mlflow.uri, "outage") >= 2, 300,
                                "two epochs")
                server: Any = mlflow if which == "mlflow" else pg
                server.stop()
                time.sleep(seconds)
                server.start()
                code = driver.finish(timeout=900)
            finally:
                driver.cleanup()
            verdict = check_record(mlflow.uri, pg.url, "outage", 3, epochs)
            pg.close()
    finally:
        if pg is not None:
            pg.close()
        mlflow.stop()
    row.add(code == 0 and verdict.survived, verdict.lost, verdict.duplicated,
            "; ".join(verdict.problems) or f"exit {code}")


def ctrl_c_and_concurrency(bench: Bench, once: Row, twice: Row, resumes: Row,
                           searches: Row) -> None:
    """Two searches at once in one folder; Ctrl-C once on one of them, two resumes at once,
    Ctrl-C twice on the one that runs, then resume to the end."""
    folder = bench.folder("concurrency")
    epochs = 6
    space = write_space(folder, bench.teacher, name="twice", fixed={**FIXED, "epochs": epochs},
                        search={"num_samples": 4, "max_concurrent": 1, "sampler": "random",
                                "seed": 1})
    store = folder / "kdtune-runs"
    uri, study = f"sqlite:///{store / 'mlflow.db'}", f"sqlite:///{store / 'optuna.db'}"
    from tests.faults.harness import epochs_logged

    with ray_temp() as tmp:
        drivers = []
        for k in range(2):
            (tmp / f"s{k}").mkdir()
            drivers.append(Driver(["search", str(space)], folder, kdtune_env(tmp / f"s{k}"),
                                  folder / f"search-{k}.log", tmp / f"s{k}"))
        # Ctrl-C once on the second sweep (the driver that got the name twice-2), once it trains
        drivers[0].wait_for(lambda: "sweep 'twice-2'" in drivers[0].output + drivers[1].output,
                            300, "both sweeps registered")
        victim_name = "twice-2"
        victim = next(d for d in drivers if "sweep 'twice-2'" in d.output)
        other = next(d for d in drivers if d is not victim)
        victim.wait_for(lambda: epochs_logged(uri, victim_name) > 0, 300, "an epoch")
        victim.interrupt()
        code_once = victim.finish(timeout=300)
        code_other = other.finish(timeout=600)
        said_once = sum(f"kdtune resume {victim_name}" in ln
                        for ln in victim.output.splitlines()) == 1
        once.add(code_once == 130 and said_once and "Traceback" not in victim.output,
                 note=f"exit {code_once}")
        # two resumes at once
        resume = []
        for k in range(2):
            (tmp / f"r{k}").mkdir()
            resume.append(Driver(["resume", victim_name], folder, kdtune_env(tmp / f"r{k}"),
                                 folder / f"resume-{k}.log", tmp / f"r{k}"))
        deadline = time.monotonic() + 120
        while all(r.running() for r in resume) and time.monotonic() < deadline:
            time.sleep(0.1)
        refused = [r for r in resume if not r.running()]
        runner = next((r for r in resume if r.running()), resume[0])
        ok = len(refused) == 1 and refused[0].finish(timeout=10) == 2 and \
            len(refused[0].output.strip().splitlines()) == 1
        # Ctrl-C twice on the one that runs
        done = epochs_logged(uri, victim_name)
        try:
            runner.wait_for(lambda: epochs_logged(uri, victim_name) > done, 300, "an epoch")
            runner.interrupt()
            runner.wait_for(lambda: "kdtune: stopping" in runner.output, 60, "Ctrl-C")
            runner.interrupt()
            code_twice = runner.finish(timeout=120)
        except AssertionError:
            code_twice = runner.finish(timeout=600)
        twice.add(code_twice == -signal.SIGINT and sum(
            f"kdtune resume {victim_name}" in ln for ln in runner.output.splitlines()) == 1,
                  note=f"exit {code_twice}")
        (tmp / "last").mkdir()
        last = Driver(["resume", victim_name], folder, kdtune_env(tmp / "last"),
                      folder / "resume-last.log", tmp / "last")
        code_last = last.finish(timeout=600)
    verdict = check_record(uri, study, victim_name, 4, epochs)
    resumes.add(ok and code_last == 0 and verdict.survived, verdict.lost, verdict.duplicated,
                "; ".join(verdict.problems) or f"refused {len(refused)}")
    other_verdict = check_record(uri, study, "twice", 4, epochs)
    searches.add(code_other == 0 and other_verdict.survived and verdict.survived,
                 other_verdict.lost + verdict.lost,
                 other_verdict.duplicated + verdict.duplicated,
                 "; ".join(other_verdict.problems) or f"exit {code_other}")


def bad_input(bench: Bench, row: Row) -> None:
    """Every bad-input case of tests/faults/test_bad_input.py, through the CLI in-process."""
    import contextlib
    import io

    from kdtune.cli import main
    from tests.faults.test_bad_input import MALFORMED

    folder = bench.folder("bad-input")
    space = write_space(folder, bench.teacher)
    cases: list[list[str]] = []
    for flags, _ in MALFORMED:
        cases += [["search", str(space), *flags], ["resume", "faults", *flags],
                  ["best", "faults", *flags]]
    for parameters in ({"hidden": {"type": "categorical", "choices": [[8], [0]]}},
                       {"dropout": {"type": "categorical", "choices": [0.1, 1.5]}}):
        sub = bench.folder("bad-space")
        cases.append(["search", str(write_space(sub, bench.teacher, parameters=parameters,
                                                search={"num_samples": 2,
                                                        "sampler": "random"}))])
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for argv in cases:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
            lines = err.getvalue().strip().splitlines()
            row.add(code == 2 and len(lines) == 1 and "Traceback" not in err.getvalue(),
                    note=" ".join(argv[:1] + argv[2:]))
    finally:
        os.chdir(cwd)


# -- the table ---------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    lines = ["| fault | repetitions | survived | runs lost | runs duplicated |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.fault} | {r.repetitions} | {r.survived} | {r.lost} | "
                     f"{r.duplicated} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="driver kills (default 10)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of the other faults")
    parser.add_argument("--outage", type=float, default=60, help="seconds a server is away")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=("worker", "driver", "servers",
                                                      "concurrency", "bad"))
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    wanted = set(args.only or ("worker", "driver", "servers", "concurrency", "bad"))
    rows = {k: Row(k) for k in (
        "Ray worker of a running trial SIGKILLed", "trial loss NaN (fails once, no retry)",
        "driver SIGKILLed at a random moment, then resumed",
        f"MLflow server stopped {args.outage:.0f} s mid-sweep",
        f"PostgreSQL study database stopped {args.outage:.0f} s mid-sweep",
        "Ctrl-C once, then resume", "Ctrl-C twice (stops at once), then resume",
        "two resumes of one sweep at once", "two searches at once in one folder",
        "bad input (URLs, space values): one line, exit 2")}
    names = list(rows)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="kdtune-faults-"))
    started = time.monotonic()
    bench = Bench(root)
    steps: list[tuple[str, Callable[[], None]]] = []
    for _ in range(args.reps if "worker" in wanted else 0):
        steps.append(("worker", lambda: worker_and_nan(bench, rows[names[0]], rows[names[1]])))
    for _ in range(args.kills if "driver" in wanted else 0):
        steps.append(("driver", lambda: kill_driver(bench, rows[names[2]], rng)))
    if "servers" in wanted and postgres_bin() is not None:
        for _ in range(args.reps):
            steps.append(("mlflow", lambda: outage(bench, rows[names[3]], args.outage,
                                                   "mlflow")))
            steps.append(("postgres", lambda: outage(bench, rows[names[4]], args.outage,
                                                     "postgres")))
    for _ in range(args.reps if "concurrency" in wanted else 0):
        steps.append(("concurrency", lambda: ctrl_c_and_concurrency(
            bench, rows[names[5]], rows[names[6]], rows[names[7]], rows[names[8]])))
    if "bad" in wanted:
        steps.append(("bad", lambda: bad_input(bench, rows[names[9]])))
    for k, (what, step) in enumerate(steps, 1):
        t = time.monotonic()
        try:
            step()
        except Exception as exc:  # a fault the harness could not even set up: report it
            print(f"  {what}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        print(f"[{k}/{len(steps)}] {what}: {time.monotonic() - t:.0f} s", flush=True)
    shown = [r for r in rows.values() if r.repetitions]
    print()
    print(table(shown))
    for r in shown:
        for note in r.notes:
            print(f"  {r.fault}: {note}")
    print(f"\n{time.monotonic() - started:.0f} s; working folder {root}"
          + ("" if args.keep else " (removed)"))
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
