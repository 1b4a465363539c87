"""The driver SIGKILLed (with its whole local Ray) at seeded random moments -- start-up,
teacher training, trials running, the final report -- and started again each time: the sweep
ends with exactly ``num_samples`` child runs, none duplicated, every epoch once, the parent
FINISHED. Killed before the sweep was registered, ``kdtune resume`` says so in one line and
``kdtune search`` starts it again under the same name.

``benchmarks/faults.py`` runs the same with 10 moments; here 3 keep CI short.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kdtune.cli import main

from .harness import Driver, check_record, epochs_logged, kdtune_env, trials_ended, write_space

SEED = 2026
EPOCHS, SAMPLES = 4, 4
#: The teacher the driver trains (so that a kill can land while it trains).
TEACHER = {"model": "mlp", "hidden": [64], "epochs": 6, "lr": 0.05}


def kill_at(driver: Driver, moment: str, rng: random.Random, uri: str, name: str) -> None:
    """Wait for ``moment`` of the driver's run, a seeded random delay more, then SIGKILL it
    (all of it); return early if it ended by itself first."""
    import time

    before = epochs_logged(uri, name)
    conditions = {
        "start-up": (lambda: True, 0.5, 4.0),
        "teacher": (lambda: "training the teacher" in driver.output
                    or "teacher:" in driver.output, 0.0, 1.5),
        "trials": (lambda: epochs_logged(uri, name) > before, 0.0, 3.0),
        "final report": (lambda: trials_ended(uri, name) >= SAMPLES, 0.0, 0.3),
    }
    condition, low, high = conditions[moment]
    deadline = time.monotonic() + 300
    while driver.running() and not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert time.monotonic() < deadline, f"{moment} never came:\n{driver.output[-3000:]}"
    time.sleep(rng.uniform(low, high))
    driver.kill()


@pytest.mark.slow
def test_driver_killed_at_seeded_moments_then_resumed(
        store_template: Path, tmp_path: Path, ray_tmp: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED)
    moments = sorted(rng.sample(range(4), 3))
    plan = [("start-up", "teacher", "trials", "final report")[i] for i in moments]
    space = write_space(tmp_path, TEACHER, name="killed",
                        fixed={"dataset": "digits", "model": "mlp", "epochs": EPOCHS,
                               "batch_size": 32, "seeds": [0]},
                        search={"num_samples": SAMPLES, "max_concurrent": 2,
                                "sampler": "tpe", "seed": 3})
    store = tmp_path / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    flags = ["--mlflow-uri", uri, "--storage", str(store / "ray")]
    env = kdtune_env(ray_tmp)
    outputs = []
    registered = False
    for k, moment in enumerate(plan):
        argv = ["resume", "killed", *flags] if registered else ["search", str(space), *flags]
        driver = Driver(argv, tmp_path, env, tmp_path / f"run-{k}.log", ray_tmp)
        try:
            kill_at(driver, moment, rng, uri, "killed")
        finally:
            driver.cleanup()
        outputs.append(driver.output)
        from kdtune.tracking import Tracker

        registered = (store / "mlflow.db").exists() and \
            Tracker(uri).find_sweep("killed") is not None
        if not registered:  # resume says so in one line; search starts it again
            assert main(["resume", "killed", *flags]) == 2
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and "nothing to resume" in err, err
    argv = ["resume", "killed", *flags] if registered else ["search", str(space), *flags]
    last = Driver(argv, tmp_path, env, tmp_path / "run-last.log", ray_tmp)
    code = last.finish(timeout=400)
    outputs.append(last.output)
    assert code == 0, last.output[-4000:]
    # (a kill of the final report may land after the driver finished the sweep)
    assert "finished: 4 trials" in last.output or "already finished" in last.output, \
        last.output[-4000:]
    for output in outputs:
        assert "Traceback" not in output, output[-4000:]
    verdict = check_record(uri, f"sqlite:///{store / 'optuna.db'}", "killed", SAMPLES,
                           EPOCHS)
    assert verdict.survived, (plan, verdict.problems)
