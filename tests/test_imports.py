"""``import kdtune`` and ``kdtune train`` must not load the search/tracking stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("ray", "mlflow", "optuna", "pandas")

SCRIPT = f"""
import json, sys
import kdtune, kdtune.cli, kdtune.trainer, kdtune.teacher_store
after_import = sorted(m for m in {HEAVY!r} if m in sys.modules)
code = kdtune.cli.main(["train", "--method", "none", "--hidden", "8", "--epochs", "1",
                        "--device", "cpu", "--threads", "1", "--json"])
after_train = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"code": code, "after_import": after_import, "after_train": after_train}}))
"""


def run_fresh(script: str, cwd: Path) -> str:
    """Run ``script`` in a new interpreter (nothing imported yet); its last line of output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_core_does_not_import_ray_or_mlflow(tmp_path: Path) -> None:
    report = json.loads(run_fresh(SCRIPT, tmp_path))
    assert report == {"code": 0, "after_import": [], "after_train": []}


def test_sweep_module_leaves_torch_to_the_start_up_thread(tmp_path: Path) -> None:
    """``kdtune search`` imports torch and the trainer in a thread beside Ray's start-up
    (``start_ray``); importing the sweep module must not do it first."""
    script = "import sys, kdtune.cli, kdtune.tune.sweep; print('torch' in sys.modules)"
    assert run_fresh(script, tmp_path) == "False"


def test_latency_board_process_does_not_import_torch(tmp_path: Path) -> None:
    """The sweep's latency board runs in its own Ray worker, which imports the board's module
    to build the actor: that must not cost the seconds of CPU torch takes to import."""
    script = ("import sys, kdtune.tune.latency_board as b; board = b.LatencyBoard(); "
              "board.publish('k', 1.5); assert board.get('k') == 1.5; "
              "print(sorted(m for m in ('torch', 'pandas', 'mlflow') if m in sys.modules))")
    assert run_fresh(script, tmp_path) == "[]"


def test_digits_read_without_sklearn_import_match_sklearn() -> None:
    """kdtune reads digits' CSV itself (to keep pandas out); it must be sklearn's exact data."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from kdtune.data.datasets import _digits_arrays

    x, y = _digits_arrays()
    bunch = load_digits()
    assert torch.equal(x, torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1))
    assert np.array_equal(y, bunch.target)


PARSER_DECIDES = [
    ["--help"],
    ["train", "--help"],  # the method flags come from the registry's metadata
    ["train", "--method", "rkd5"],  # refusals of bad input, from the registries' metadata
    ["train", "--model", "resnet", "--hidden", "8"],
    ["train", "--dataset", "digits", "--data-root", "x"],
    ["train", "--method", "dkd", "--nckd-weight", "-1"],
    ["search", "--help"],
    ["serach", "space.yaml"],  # unknown command
    ["best", "--tpo", "3"],  # unknown flag
    ["train", "--epochs", "two"],  # wrong flag type
    ["search", "space.yaml", "--num-samples", "two"],
    ["search", "space.yaml", "--address", "10.0.0.1"],  # refused before Ray starts
]
REFUSAL = """
import contextlib, io, json, sys
from kdtune.cli import main
shown = io.StringIO()
try:
    with contextlib.redirect_stdout(shown), contextlib.redirect_stderr(shown):
        code = main({argv!r})
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "shown": shown.getvalue(),
                  "imported": sorted(m for m in ("torch", "mlflow", "ray", "optuna")
                                     if m in sys.modules)}}))
"""


def test_what_the_parser_decides_imports_no_torch_mlflow_or_ray(tmp_path: Path) -> None:
    """Help and the refusals the parser can decide answer at once: a fresh process shows
    that they import none of the heavy libraries (each takes seconds to import)."""
    for argv in PARSER_DECIDES:
        report = json.loads(run_fresh(REFUSAL.format(argv=argv), tmp_path))
        assert report["imported"] == [], (argv, report)
        assert report["code"] == (0 if "--help" in argv else 2), (argv, report)
        if "--help" not in argv:
            assert len(report["shown"].strip().splitlines()) == 1, (argv, report)
    assert list(tmp_path.iterdir()) == []


def test_the_registries_metadata_imports_no_torch(tmp_path: Path) -> None:
    """Names, parameters, types, defaults and docs of methods, feature methods, models and
    datasets, and a config resolved against them, need no torch."""
    script = ("import sys, kdtune.methods as m, kdtune.models as mo, kdtune.data as d, "
              "kdtune.resolve as r, kdtune.train_flags, kdtune.methods.docs as docs; "
              "assert m.method_params('dkd') and m.feature_method_params('crd'); "
              "assert mo.model_options('resnet20') and d.list_datasets(); "
              "assert docs.methods_table() and m.get_method('dml').formula; "
              "r.config_from_dict({'method': 'dkd', 'model': 'wrn', 'dataset': 'cifar10'}); "
              "print(sorted(k for k in ('torch', 'numpy') if k in sys.modules))")
    assert run_fresh(script, tmp_path) == "[]"
