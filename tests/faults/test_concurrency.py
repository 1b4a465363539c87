"""Several drivers at once, and Ctrl-C.

* Two ``kdtune search`` started at the same moment in one new folder both complete: the
  store is created once, and the second takes the next free name.
* Ctrl-C once (SIGINT to the driver's process group, as a terminal sends it) stops a sweep
  gracefully: one line says how to continue; the sweep is resumable.
* Two ``kdtune resume`` of one sweep started at once: one runs it, the other refuses in one
  line. Ctrl-C twice stops a driver at once; ``resume`` then finishes the sweep.
* A local Ray started by kdtune listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from .harness import (
    Driver,
    check_record,
    kdtune_env,
    listening_addresses,
    processes_of,
    write_space,
)

LOOPBACK = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")

pytestmark = pytest.mark.slow


def test_two_searches_at_once_in_one_folder(store_template: Path, teacher_path: Path,
                                            tmp_path: Path, ray_tmp: Path) -> None:
    space = write_space(tmp_path, teacher_path, name="twice",
                        fixed={"dataset": "digits", "model": "mlp", "epochs": 3,
                               "batch_size": 64, "seeds": [0]},
                        search={"num_samples": 2, "max_concurrent": 1, "sampler": "random",
                                "seed": 1})
    drivers = []
    for k in range(2):
        tmp = ray_tmp / f"d{k}"
        tmp.mkdir()
        drivers.append(Driver(["search", str(space)], tmp_path, kdtune_env(tmp),
                              tmp_path / f"search-{k}.log", tmp))
    codes = [d.finish(timeout=400) for d in drivers]
    assert codes == [0, 0], [d.output[-3000:] for d in drivers]
    outputs = "".join(d.output for d in drivers)
    assert "sweep 'twice' finished: 2 trials" in outputs
    assert "sweep 'twice-2' finished: 2 trials" in outputs
    assert "Traceback" not in outputs
    store = tmp_path / "kdtune-runs"
    with sqlite3.connect(store / "mlflow.db") as db:  # created once: one kdtune experiment
        assert db.execute("SELECT count(*) FROM experiments WHERE name = 'kdtune'"
                          ).fetchone() == (1,)
    uri, study = f"sqlite:///{store / 'mlflow.db'}", f"sqlite:///{store / 'optuna.db'}"
    for name in ("twice", "twice-2"):
        verdict = check_record(uri, study, name, 2, 3)
        assert verdict.survived, (name, verdict.problems)


def test_ctrl_c_once_twice_and_two_resumes_at_once(store_template: Path, teacher_path: Path,
                                                   tmp_path: Path, ray_tmp: Path) -> None:
    space = write_space(tmp_path, teacher_path, name="ctrlc",
                        fixed={"dataset": "digits", "model": "mlp", "epochs": 6,
                               "batch_size": 32, "seeds": [0]},
                        search={"num_samples": 4, "max_concurrent": 2, "sampler": "tpe",
                                "seed": 4})
    store = tmp_path / "store"
    uri, study = f"sqlite:///{store / 'mlflow.db'}", f"sqlite:///{store / 'optuna.db'}"
    flags = ["--mlflow-uri", uri, "--storage", str(store / "ray")]
    env = kdtune_env(ray_tmp)

    def epochs() -> int:
        from tests.faults.test_driver_killed import epochs_logged

        return epochs_logged(uri, "ctrlc")

    # -- Ctrl-C once, while trials run -----------------------------------------------------
    search = Driver(["search", str(space), *flags], tmp_path, env, tmp_path / "search.log",
                    ray_tmp)
    try:
        search.wait_for(lambda: epochs() >= 2, 300, "a trained epoch")
        # every server of the local Ray this driver started listens on 127.0.0.1 only
        addresses = listening_addresses(processes_of(search.proc.pid, str(ray_tmp)))
        assert addresses and all(a.startswith(LOOPBACK) for a in addresses), addresses
        search.interrupt()
        code = search.finish(timeout=120)
    finally:
        search.cleanup()
    assert code == 130, search.output[-3000:]
    assert "Traceback" not in search.output
    said = [ln for ln in search.output.splitlines() if "kdtune resume ctrlc" in ln]
    assert len(said) == 1 and "stopped (Ctrl-C)" in said[0], search.output[-3000:]
    from kdtune.tracking import Tracker

    assert Tracker(uri).sweep_run("ctrlc").info.status == "RUNNING"

    # -- two resumes at once: one runs it, the other refuses in one line --------------------
    resumes = []
    for k in range(2):
        tmp = ray_tmp / f"r{k}"
        tmp.mkdir()
        resumes.append(Driver(["resume", "ctrlc", *flags], tmp_path, kdtune_env(tmp),
                              tmp_path / f"resume-{k}.log", tmp))
    try:
        deadline = time.monotonic() + 120
        while all(r.running() for r in resumes) and time.monotonic() < deadline:
            time.sleep(0.1)
        refused = [r for r in resumes if not r.running()]
        assert len(refused) == 1, [r.output[-2000:] for r in resumes]
        assert refused[0].finish(timeout=10) == 2
        lines = refused[0].output.strip().splitlines()
        assert len(lines) == 1 and "being run by another kdtune" in lines[0], lines
        runner = next(r for r in resumes if r is not refused[0])
        # -- Ctrl-C twice: at once ---------------------------------------------------------
        done = epochs()
        runner.wait_for(lambda: epochs() > done, 300, "an epoch after the resume")
        runner.interrupt()
        time.sleep(0.05)
        runner.interrupt()
        code = runner.finish(timeout=120)
    finally:
        for r in resumes:
            r.cleanup()
    assert code == 130, runner.output[-3000:]
    assert "stopped at once" in runner.output, runner.output[-3000:]
    said = [ln for ln in runner.output.splitlines() if "kdtune resume ctrlc" in ln]
    assert len(said) == 1, runner.output[-3000:]
    assert "Traceback" not in runner.output

    # -- resume finishes it -------------------------------------------------------------------
    tmp = ray_tmp / "last"
    tmp.mkdir()
    last = Driver(["resume", "ctrlc", *flags], tmp_path, kdtune_env(tmp),
                  tmp_path / "resume-last.log", tmp)
    assert last.finish(timeout=400) == 0, last.output[-3000:]
    assert "finished: 4 trials" in last.output
    verdict = check_record(uri, study, "ctrlc", 4, 6)
    assert verdict.survived, verdict.problems
    assert not os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")  # the test process untouched
