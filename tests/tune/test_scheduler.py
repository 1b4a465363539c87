"""PersistentASHA: the rungs survive in a JSON file and a new scheduler decides as the old one.

The scheduler is the real one; the trials are stand-ins carrying only a ``trial_id`` (all ASHA
looks at), and the Tune controller argument is unused by ASHA.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from kdtune.tune.scheduler import PersistentASHA

SETTINGS = {"time_attr": "epoch", "metric": "val_accuracy", "mode": "max", "max_t": 8,
            "grace_period": 1, "reduction_factor": 2}


class FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def report(scheduler: ASHAScheduler, trial: FakeTrial, epoch: int, value: float) -> str:
    return scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_accuracy": value})


def make(path: Path) -> PersistentASHA:
    return PersistentASHA(**SETTINGS, state_path=path)


def test_rungs_are_written_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "exp" / "kdtune-asha.json"
    first = make(path)
    trials = {name: FakeTrial(name) for name in "abcd"}
    for trial in trials.values():
        first.on_trial_add(None, trial)
    # rung 1: b, a, c recorded; c is below the cutoff of (b, a) and stopped
    assert report(first, trials["b"], 1, 0.8) == TrialScheduler.CONTINUE
    assert report(first, trials["a"], 1, 0.9) == TrialScheduler.CONTINUE
    assert report(first, trials["c"], 1, 0.2) == TrialScheduler.STOP
    # rung 2: a recorded; d (never at rung 2 before) still running
    assert report(first, trials["a"], 2, 0.95) == TrialScheduler.CONTINUE
    first.on_trial_complete(None, trials["c"], {"epoch": 1, "val_accuracy": 0.2})

    saved = json.loads(path.read_text())
    rungs = {r["milestone"]: r["recorded"] for r in saved["brackets"][0]}
    assert sorted(rungs) == [1, 2, 4, 8]
    assert rungs[1] == {"b": 0.8, "a": 0.9, "c": 0.2}
    assert rungs[2] == {"a": 0.95} and rungs[4] == {} and rungs[8] == {}
    assert saved["num_stopped"] == 1
    assert not list(path.parent.glob("*.tmp"))  # written atomically

    second = make(path)  # as after `kdtune resume`: a new scheduler on the same file
    second.on_trial_add(None, FakeTrial("e"))
    assert second.rungs() == first.rungs()
    assert second._num_stopped == 1

    # a weak trial arriving at rung 1 is stopped by both, exactly as the original would
    weak = FakeTrial("w")
    assert report(second, weak, 1, 0.5) == TrialScheduler.STOP
    first.on_trial_add(None, weak)
    assert report(first, weak, 1, 0.5) == TrialScheduler.STOP
    # a strong one passes both
    strong = FakeTrial("s")
    second.on_trial_add(None, strong)
    first.on_trial_add(None, strong)
    assert report(second, strong, 1, 0.99) == report(first, strong, 1, 0.99) \
        == TrialScheduler.CONTINUE
    # the plain ASHA of Ray (empty rungs after a restore) would have let the weak one through
    plain = ASHAScheduler(**SETTINGS)
    plain.on_trial_add(None, weak)
    assert report(plain, weak, 1, 0.5) == TrialScheduler.CONTINUE


def test_restored_trial_not_added_again(tmp_path: Path) -> None:
    """Ray may hand a restored trial's results without calling on_trial_add first."""
    path = tmp_path / "kdtune-asha.json"
    first = make(path)
    a, b = FakeTrial("a"), FakeTrial("b")
    for t in (a, b):
        first.on_trial_add(None, t)
    assert report(first, a, 1, 0.9) == TrialScheduler.CONTINUE
    assert report(first, b, 1, 0.95) == TrialScheduler.CONTINUE

    second = make(path)
    # b resumes from its checkpoint at epoch 1: its rung-1 value is already recorded, so it
    # is not judged (or recorded) twice, and goes on to rung 2 where a is not yet recorded
    assert report(second, b, 1, 0.95) == TrialScheduler.CONTINUE
    assert report(second, b, 2, 0.85) == TrialScheduler.CONTINUE
    assert second.rungs()[0][-1]["recorded"] == {"a": 0.9, "b": 0.95}
    assert json.loads(path.read_text())["brackets"][0][-2]["recorded"] == {"b": 0.85}
    # completing a trial Ray re-added is fine; one it never added is ignored
    second.on_trial_complete(None, b, {"epoch": 2, "val_accuracy": 0.85})
    second.on_trial_complete(None, FakeTrial("zz"), {"epoch": 1, "val_accuracy": 0.1})
    second.on_trial_remove(None, FakeTrial("zz"))


def test_no_file_means_empty_rungs(tmp_path: Path) -> None:
    scheduler = make(tmp_path / "missing" / "kdtune-asha.json")
    scheduler.on_trial_add(None, FakeTrial("a"))
    assert all(not rung["recorded"] for rung in scheduler.rungs()[0])
    assert not (tmp_path / "missing").exists()  # nothing written until a result arrives
