"""Benchmark 7: how long the read-only commands take to answer, whole process included.

A real store is made first, outside the timing: a tiny real sweep by ``kdtune search`` (4
trials of MLP students on digits, 2 epochs, no scheduler; its teacher trained by the driver)
into a scratch folder. Then each command runs as a fresh process (interpreter start, imports,
queries, printing: what a user waits for), side by side with its yardstick, interleaved
(A B, B A, ...) after a warm-up, median of the repeats:

* ``kdtune best NAME`` vs the floor of any MLflow query giving that answer: a plain script
  that imports MLflow, opens the same store and runs the same search (the sweep's runs, one
  ``search_runs``), printing the number of runs. Target <= 1.2x.
* ``kdtune best --list`` vs the same floor for its search (every run of the experiment).
  Target <= 1.2x.

Every process runs with its bytecode compiled, as an installed kdtune and MLflow have it: the
child processes write and read their ``.pyc`` files under one scratch folder
(``PYTHONPYCACHEPREFIX``; ``PYTHONDONTWRITEBYTECODE`` unset), filled by the warm-up round.
Without that, a process started with ``PYTHONDONTWRITEBYTECODE=1`` compiles kdtune's own
modules from source on every start, which only kdtune's side pays.

Printed beside them, not judged (the test suite checks that these import no torch, MLflow
or Ray): the answers the parser decides (``kdtune --help``, ``kdtune search --help``, an
unknown command, an unknown flag, a wrong flag type) in seconds, against a bare interpreter
start (``python -c pass``) and against ``python -c "import mlflow"``.

    .venv/bin/python -m benchmarks.bench_startup [--quick] [--repeats N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml

from benchmarks.common import (
    Result,
    emit,
    header,
    interleaved,
    machine,
    median,
    note,
    python,
    scratch,
    spread,
)

TARGET = 1.2
NAME = "startup"
SPACE = {
    "name": NAME,
    "fixed": {"dataset": "digits", "model": "mlp", "epochs": 2, "batch_size": 64,
              "seeds": [0]},
    "teacher": {"model": "mlp", "hidden": [64], "epochs": 2, "lr": 0.05},
    "parameters": {
        "method": {"type": "categorical", "choices": ["none", "vanilla"]},
        "alpha": {"type": "float", "low": 0.1, "high": 0.9, "when": {"method": ["vanilla"]}},
        "hidden": {"type": "categorical", "choices": [[8], [16]]},
        "lr": {"type": "logfloat", "low": 0.01, "high": 0.2},
    },
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "search": {"num_samples": 4, "max_concurrent": 2, "sampler": "tpe", "seed": 5},
    "scheduler": {"type": "none"},
    "resources": {"cpus": 1, "gpus": 0},
}

#: The floor: import MLflow, open the store, run one search (argv: URI, filter string).
FLOOR = """
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("kdtune")
runs = client.search_runs([experiment.experiment_id], sys.argv[2], max_results=1000,
                          order_by=["attributes.start_time ASC"])
print(len(runs), "runs")
"""


def make_store(folder: Path) -> str:
    """A real store holding one finished tiny sweep; its tracking URI."""
    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    done = subprocess.run([python(), "-m", "kdtune", "search", str(space)], cwd=folder,
                          capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"kdtune search failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return f"sqlite:///{(folder / 'kdtune-runs' / 'mlflow.db').resolve()}"


def compiled(folder: Path) -> dict[str, str]:
    """The environment of the timed processes: bytecode written and read under ``folder``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    return env


def command(argv: Sequence[str], cwd: Path, codes: Sequence[int] = (0,)):
    """A callable running ``argv`` as a fresh process (timed around the call by
    :func:`~benchmarks.common.interleaved`); its exit code must be one of ``codes``."""
    env = compiled(cwd)

    def run() -> None:
        done = subprocess.run(list(argv), cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=300, env=env)
        if done.returncode not in codes:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")

    return run


def compare(name: str, kdtune: Sequence[str], floor: Sequence[str], cwd: Path,
            repeats: int) -> Result:
    a, b = interleaved(command(kdtune, cwd), command(floor, cwd), repeats=repeats)
    ratios = sorted(x / y for x, y in zip(a, b, strict=True))
    return emit(Result(f"startup[{name}]", median(a) / median(b), "<=", TARGET,
                       raw=f"kdtune {spread(a)} vs plain MLflow script {spread(b)}; "
                           f"pairwise ratios {ratios[0]:.2f}..{ratios[-1]:.2f}"))


def run(quick: bool = False, repeats: int | None = None, keep: bool = False) -> list[Result]:
    repeats = repeats or (3 if quick else 9)
    header("7 read-only commands: whole-process time vs a plain MLflow script")
    results: list[Result] = []
    with scratch("startup", keep=keep) as folder:
        note(f"making the store: a 4-trial `kdtune search` in {folder} (not timed)")
        uri = make_store(folder)
        kd = [python(), "-m", "kdtune"]
        sweep_filter = f"tags.`kdtune.sweep` = '{NAME}'"
        results.append(compare("best NAME", [*kd, "best", NAME, "--mlflow-uri", uri],
                               [python(), "-c", FLOOR, uri, sweep_filter], folder, repeats))
        results.append(compare("best --list", [*kd, "best", "--list", "--mlflow-uri", uri],
                               [python(), "-c", FLOOR, uri, ""], folder, repeats))
        bare = command([python(), "-c", "pass"], folder)
        mlflow = command([python(), "-c", "import mlflow"], folder)
        parser_decides = {
            "kdtune --help": ([*kd, "--help"], (0,)),
            "kdtune search --help": ([*kd, "search", "--help"], (0,)),
            "kdtune serach": ([*kd, "serach"], (2,)),
            "kdtune best --tpo 3": ([*kd, "best", "--tpo", "3"], (2,)),
            "kdtune train --epochs two": ([*kd, "train", "--epochs", "two"], (2,)),
        }
        small = max(3, repeats // 2)
        base, imported = interleaved(bare, mlflow, repeats=small)
        note(f"python -c pass: {spread(base)}; python -c 'import mlflow': {spread(imported)}")
        for label, (argv, codes) in parser_decides.items():
            times, base = interleaved(command(argv, folder, codes), bare, repeats=small)
            note(f"{label}: {spread(times)} ({median(times) - median(base):+.3f} s over a bare "
                 f"interpreter start; import mlflow alone: {median(imported):.3f} s)")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 9")
    parser.add_argument("--repeats", type=int, help="repeats per side")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    print(f"on {machine()}", flush=True)
    run(args.quick, args.repeats, args.keep)


if __name__ == "__main__":
    main()
