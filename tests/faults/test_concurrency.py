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

import signal
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


def test_concurrent_drivers_and_ctrl_c(store_template: Path, teacher_path: Path,
                                       tmp_path: Path, ray_tmp: Path) -> None:
    space = write_space(tmp_path, teacher_path, name="twice",
                        fixed={"dataset": "digits", "model": "mlp", "epochs": 6,
                               "batch_size": 32, "seeds": [0]},
                        search={"num_samples": 2, "max_concurrent": 1, "sampler": "random",
                                "seed": 1})
    store = tmp_path / "kdtune-runs"  # the default store of the folder both start in
    uri, study = f"sqlite:///{store / 'mlflow.db'}", f"sqlite:///{store / 'optuna.db'}"

    def epochs(name: str) -> int:
        from tests.faults.harness import epochs_logged

        return epochs_logged(uri, name)

    def driver(argv: list[str], label: str) -> Driver:
        tmp = ray_tmp / label
        tmp.mkdir()
        return Driver(argv, tmp_path, kdtune_env(tmp), tmp_path / f"{label}.log", tmp)

    # -- two searches at once in one new folder; Ctrl-C once on the second -----------------
    searches = [driver(["search", str(space)], f"search-{k}") for k in range(2)]
    try:
        searches[0].wait_for(lambda: "sweep 'twice-2'" in searches[0].output + searches[1].output,
                             300, "both sweeps registered")
        second = next(d for d in searches if "sweep 'twice-2'" in d.output)
        first = next(d for d in searches if d is not second)
        second.wait_for(lambda: epochs("twice-2") >= 1, 300, "a trained epoch")
        # every server of the local Ray this driver started listens on 127.0.0.1 only
        addresses = listening_addresses(processes_of(second.proc.pid, str(second.ray_tmp)))
        assert addresses and all(a.startswith(LOOPBACK) for a in addresses), addresses
        second.interrupt()
        code = second.finish(timeout=120)
        assert first.finish(timeout=400) == 0, first.output[-3000:]
    finally:
        for d in searches:
            d.cleanup()
    assert code == 130, second.output[-3000:]
    said = [ln for ln in second.output.splitlines() if "kdtune resume twice-2" in ln]
    assert len(said) == 1 and "stopped (Ctrl-C)" in said[0], second.output[-3000:]
    assert "sweep 'twice' finished: 2 trials" in first.output
    assert "Traceback" not in first.output + second.output
    with sqlite3.connect(store / "mlflow.db") as db:  # created once: one kdtune experiment
        assert db.execute("SELECT count(*) FROM experiments WHERE name = 'kdtune'"
                          ).fetchone() == (1,)
    verdict = check_record(uri, study, "twice", 2, 6)
    assert verdict.survived, verdict.problems
    from kdtune.tracking import Tracker

    assert Tracker(uri).sweep_run("twice-2").info.status == "RUNNING"
    # the second ran while the first did: another sampler seed, said and recorded
    tracker = Tracker(uri)
    assert {n: tracker.sweep_run(n).data.params["sampler_seed"] for n in ("twice", "twice-2")
            } == {"twice": "1", "twice-2": "2"}
    assert "sampler seed 2 (search.seed 1 + 1" in second.output

    # -- two resumes at once: one runs it, the other refuses in one line --------------------
    resumes = [driver(["resume", "twice-2"], f"resume-{k}") for k in range(2)]
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
        done = epochs("twice-2")
        runner.wait_for(lambda: epochs("twice-2") > done, 300, "an epoch after the resume")
        runner.interrupt()
        # the second once the first was taken (two signals before Python runs its handler
        # are one): while the sweep stops gracefully, or while the process shuts down
        runner.wait_for(lambda: "kdtune: stopping" in runner.output, 60, "the first Ctrl-C")
        runner.interrupt()
        code = runner.finish(timeout=120)
    finally:
        for r in resumes:
            r.cleanup()
    # the second Ctrl-C ended the process by the signal itself, while it stopped the sweep or
    # shut down: nothing after it ran; one line says how to go on
    assert code == -signal.SIGINT, (code, runner.output[-3000:])
    said = [ln for ln in runner.output.splitlines() if "kdtune resume twice-2" in ln]
    assert len(said) == 1, (code, runner.output[-3000:])
    assert "Traceback" not in runner.output

    # -- resume finishes it -------------------------------------------------------------------
    last = driver(["resume", "twice-2"], "resume-last")
    assert last.finish(timeout=400) == 0, last.output[-3000:]
    assert "finished: 2 trials" in last.output
    verdict = check_record(uri, study, "twice-2", 2, 6)
    assert verdict.survived, verdict.problems
