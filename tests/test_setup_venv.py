"""``scripts/setup-venv.sh`` (what ``make`` runs first): clones share the cached dependencies but
each runs its own code, and no clone's removal breaks another."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKER = ROOT / ".venv" / "kdtune-shared"


def _venv_cache():
    spec = importlib.util.spec_from_file_location("venv_cache", ROOT / "scripts" / "venv_cache.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clone(to: Path, version: str) -> Path:
    """The files the set-up needs, with its own ``__version__`` to tell the clones apart."""
    to.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, to / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("scripts", "kdtune"):
        shutil.copytree(ROOT / folder, to / folder, ignore=ignore)
    init = to / "kdtune" / "__init__.py"
    text = init.read_text()
    released = text.split('__version__ = "', 1)[1].split('"', 1)[0]
    init.write_text(text.replace(f'"{released}"', f'"{released}+{version}"', 1))
    return to


def _setup(clone: Path, cache: Path) -> None:
    env = {**os.environ, "KDTUNE_VENV_CACHE": str(cache)}
    done = subprocess.run(["bash", "scripts/setup-venv.sh"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _version(clone: Path) -> str:
    done = subprocess.run([str(clone / ".venv" / "bin" / "kdtune"), "--version"], cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not MARKER.is_file(), reason="this checkout's .venv was not made by "
                    "scripts/setup-venv.sh, so there is no cached environment to share")
def test_two_clones_each_run_their_own_code(tmp_path: Path) -> None:
    shared = Path(MARKER.read_text().strip())
    first, second = _clone(tmp_path / "first", "first"), _clone(tmp_path / "second", "second")
    for clone in (first, second):
        _setup(clone, shared.parent)
    assert _version(first) == "kdtune 0.1.0+first"
    assert _version(second) == "kdtune 0.1.0+second"
    # kdtune is in neither clone's shared dependencies
    shared_python = shared / "bin" / "python"
    done = subprocess.run([str(shared_python), "-I", "-c", "import kdtune"], cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "No module named 'kdtune'" in done.stderr
    # deleting one clone leaves the other working, also after its set-up runs again
    shutil.rmtree(first)
    assert _version(second) == "kdtune 0.1.0+second"
    _setup(second, shared.parent)
    assert _version(second) == "kdtune 0.1.0+second"
    assert shared_python.exists()
    # the dependencies come from the cached environment, not a copy of them
    done = subprocess.run([str(second / ".venv" / "bin" / "python"), "-c",
                           "import torch, sys; print(torch.__file__); print(sys.prefix)"],
                          cwd="/", capture_output=True, text=True, timeout=120)
    torch_file, prefix = done.stdout.split()
    assert torch_file.startswith(str(shared)) and prefix == str(second / ".venv")


def test_pruning_keeps_every_environment_a_clone_uses(tmp_path: Path) -> None:
    cache = _venv_cache()
    root = tmp_path / "cache"
    envs = {name: root / f"venv-{name}" for name in ("current", "used", "old", "older")}
    for env in envs.values():
        env.mkdir(parents=True)
    clone = tmp_path / "clone"
    (clone / ".venv").mkdir(parents=True)
    (clone / ".venv" / "kdtune-shared").write_text(str(envs["used"]))
    cache.record_user(envs["used"], clone)
    gone = tmp_path / "deleted-clone"  # a user that was deleted no longer counts
    cache.record_user(envs["old"], gone)
    moved = tmp_path / "moved-clone"  # nor one whose .venv now uses other pins
    (moved / ".venv").mkdir(parents=True)
    (moved / ".venv" / "kdtune-shared").write_text(str(envs["current"]))
    cache.record_user(envs["older"], moved)
    for age, env in enumerate(envs.values()):  # newest first, whatever recording touched
        os.utime(env, (time.time() - 100 * age, time.time() - 100 * age))

    removed = cache.prune(root, envs["current"])

    assert removed == [envs["older"]]
    assert sorted(p.name for p in root.iterdir()) == ["venv-current", "venv-old", "venv-used"]
    assert cache.live_users(envs["used"]) == [clone]
    assert cache.live_users(envs["old"]) == []


def test_set_up_refuses_a_foreign_venv(tmp_path: Path) -> None:
    clone = _clone(tmp_path / "clone", "x")
    (clone / ".venv").mkdir()
    (clone / ".venv" / "mine").write_text("not kdtune's")
    done = subprocess.run(["bash", "scripts/setup-venv.sh"], cwd=clone,
                          env={**os.environ, "KDTUNE_VENV_CACHE": str(tmp_path / "cache"),
                               "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert ".venv exists and is not kdtune's environment" in done.stderr
    assert (clone / ".venv" / "mine").exists()
