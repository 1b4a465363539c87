"""A method from outside kdtune: a package with a ``kdtune.methods`` entry point, put on
``PYTHONPATH``, is loaded by every process (``kdtune search``'s driver and its Ray workers),
searched under ``when:`` and trained; a plugin that fails to load is a one-line error.

The sweep runs as a real subprocess with its own local Ray, as in ``test_resume.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdtune.tracking import Tracker

from .conftest import new_store, sqlite_uri
from .test_resume import kdtune_env, ray_tmp, run_kdtune  # noqa: F401 (ray_tmp: a fixture)

PLUGIN = '''
from kdtune.methods import Param, register_method
from kdtune.methods.vanilla import kl_t, soft_targets


@register_method("sharp_kd", params=[Param("sharp_gain", float, 1.0, low=0, high=5,
                                           help="multiplies the soft term")],
                 formula="`sharp_gain * KL_T(softmax(z_t/T), z_s)`", paper="a plugin")
def sharp_kd(student_logits, teacher_logits, labels, *, temperature, sharp_gain):
    return sharp_gain * kl_t(soft_targets(teacher_logits, temperature), student_logits,
                             temperature)
'''


def write_plugin(folder: Path, source: str) -> Path:
    """An installed-looking package ``kdtune_sharp`` (module + ``*.dist-info``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kdtune_sharp.py").write_text(source)
    info = folder / "kdtune_sharp-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdtune-sharp\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdtune.methods]\nsharp = kdtune_sharp\n")
    return folder


def with_plugin(env: dict[str, str], folder: Path) -> dict[str, str]:
    return {**env, "PYTHONPATH": os.pathsep.join((str(folder), env["PYTHONPATH"]))}


@pytest.mark.slow
def test_search_trains_a_plugin_method_in_ray_workers(tmp_path: Path, teacher_path: Path,
                                                      ray_tmp: Path,  # noqa: F811
                                                      mlflow_template: Path) -> None:
    plugin = write_plugin(tmp_path / "plugin", PLUGIN)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "name": "plugin",
        "fixed": {"dataset": "digits", "model": "mlp", "hidden": [8], "epochs": 2,
                  "batch_size": 64, "threads": 1},
        "teacher": {"path": str(teacher_path)},
        "parameters": {
            "method": {"type": "categorical", "choices": ["sharp_kd", "vanilla"]},
            "sharp_gain": {"type": "float", "low": 0.5, "high": 2.0,
                           "when": {"method": ["sharp_kd"]}},
        },
        # random sampling with this seed draws sharp_kd twice and vanilla once
        "search": {"sampler": "random", "num_samples": 3, "seed": 0, "max_concurrent": 2},
        "scheduler": {"type": "none"},
    }, sort_keys=False))
    store = new_store(tmp_path / "store", mlflow_template)
    uri = sqlite_uri(store)
    env = with_plugin(kdtune_env(ray_tmp), plugin)
    done = run_kdtune(["search", str(space), "--mlflow-uri", uri, "--storage",
                       str(store / "ray")], cwd=tmp_path, env=env, marker=str(ray_tmp),
                      timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = Tracker(uri).trial_runs("plugin")
    assert sorted(runs["status"]) == ["FINISHED"] * 3
    methods = sorted(runs["params.method"])
    assert methods == ["sharp_kd", "sharp_kd", "vanilla"], methods
    for _, run in runs.iterrows():
        gain = run.get("params.sharp_gain")
        if run["params.method"] == "sharp_kd":  # logged, and inside the searched range
            assert 0.5 <= float(gain) <= 2.0
        else:
            assert not isinstance(gain, str)  # vanilla does not read it: not logged
        assert run["metrics.val_accuracy"] > 0


def test_a_broken_plugin_is_a_one_line_error(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "plugin", "raise RuntimeError('no GPU\\nhere')\n")
    env = with_plugin(kdtune_env(tmp_path), plugin)
    done = subprocess.run([sys.executable, "-m", "kdtune", "train", "--method", "none",
                           "--epochs", "1", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("kdtune train: error: method plugin 'sharp' (kdtune_sharp) "
                                   "failed to load: RuntimeError: no GPU here")
    assert not (tmp_path / "out").exists()
