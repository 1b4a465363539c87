"""``kdtune finalize`` stopped by Ctrl-C (SIGINT to its process group, as a terminal sends
it): one line says how to continue, nothing else reaches the terminal, and running it again
finishes the finalist runs without training any of them twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdtune.cli import main

from .harness import Driver, kdtune_env, write_space

pytestmark = pytest.mark.slow
TOP, SEEDS = 2, 2


def finalist_runs(uri: str, name: str) -> int:
    """Finalist runs (distilled or student alone) started so far."""
    from kdtune.tracking import Tracker

    try:
        runs = Tracker(uri).final_runs(name)
    except Exception:  # the store is being written
        return 0
    return 0 if runs.empty else int((runs["tags.kdtune.role"] != "teacher").sum())


def test_finalize_stopped_by_ctrl_c_continues_when_run_again(
        faults_ray: None, store_template: Path, teacher_path: Path, tmp_path: Path,
        ray_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = write_space(tmp_path, teacher_path, name="fin",
                        fixed={"dataset": "digits", "model": "mlp", "epochs": 8,
                               "batch_size": 32, "seeds": [0]},
                        search={"num_samples": 2, "max_concurrent": 1, "sampler": "random",
                                "seed": 1},
                        scheduler={"type": "none"})
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(space)]) == 0
    uri = f"sqlite:///{tmp_path / 'kdtune-runs' / 'mlflow.db'}"
    argv = ["finalize", "fin", "--top", str(TOP), "--seeds", str(SEEDS)]

    def driver(label: str) -> Driver:
        tmp = ray_tmp / label
        tmp.mkdir()
        return Driver(argv, tmp_path, kdtune_env(tmp), tmp_path / f"{label}.log", tmp)

    stopped = driver("stopped")
    try:
        stopped.wait_for(lambda: finalist_runs(uri, "fin") >= 1, 300, "a finalist run")
        stopped.interrupt()
        code = stopped.finish(timeout=120)
    finally:
        stopped.cleanup()
    output = stopped.output
    assert code == 130, output[-3000:]
    said = [ln for ln in output.splitlines() if "kdtune finalize fin" in ln]
    assert len(said) == 1 and "stopped (Ctrl-C)" in said[0], output[-3000:]
    assert "Traceback" not in output and "ERROR" not in output, output[-3000:]

    again = driver("again")
    assert again.finish(timeout=400) == 0, again.output[-3000:]
    from kdtune.tracking import Tracker

    runs = Tracker(uri).final_runs("fin")
    kd = runs[runs["tags.kdtune.role"] == "kd"]
    assert len(kd) == TOP * SEEDS and (runs["status"] == "FINISHED").all()
    assert not runs.duplicated(["tags.kdtune.role", "tags.kdtune.finalist", "params.seed"]
                               ).any()
