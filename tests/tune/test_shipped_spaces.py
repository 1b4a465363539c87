"""Every shipped search space runs end to end, in miniature, the way a user runs it.

Each file in ``search_spaces/`` and ``benchmarks/spaces/`` is loaded unchanged except for what
cannot run here: a torchvision dataset is swapped for a tiny stand-in in torchvision's on-disk
format (``kdtune.data.fake``) with ``download: false``; epochs and teacher epochs are cut to 1
(2 where ASHA has to stop something, its grace period to 1); one training seed; a few trials;
one CPU and no GPU per trial. The sweep then runs through the CLI (``kdtune search``, in this
process, on the test session's Ray; CIFAR files need torchvision's checksum check pointed at
the fake files, which only works in-process) and must end with the expected child runs in
MLflow, every configuration valid for the space, and an answer from ``kdtune best``. A new
shipped file is picked up automatically.

YAML examples in README.md and docs/ are either complete spaces (loaded as they are) or
fragments, loaded over the complete example of ``docs/search-space.md``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdtune.cli import main
from kdtune.data.fake import fake_cifar_checksums, write_fake_cifar, write_fake_mnist
from kdtune.tracking import Tracker
from kdtune.tune.space import SearchSpace, expand_grid, load_space

from .conftest import new_store, sqlite_uri

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*REPO.glob("search_spaces/*.yaml"), *REPO.glob("benchmarks/spaces/*.yaml")])
DOCS = sorted([REPO / "README.md", *REPO.glob("docs/*.md")])
TRIALS = 2  # trials per miniature sweep (fewer when the grid is smaller)

#: Tiny stand-ins in torchvision's format: (writer, keyword arguments, checksum patch or None).
FAKES: dict[str, tuple[Any, dict[str, Any], Any]] = {
    "mnist": (write_fake_mnist, {"n_train": 60, "n_test": 20}, None),
    "fashion_mnist": (write_fake_mnist, {"n_train": 60, "n_test": 20, "fashion": True}, None),
    "cifar10": (write_fake_cifar, {"n_train": 50, "n_test": 20}, {}),
    "cifar100": (write_fake_cifar, {"n_train": 200, "n_test": 100, "cifar100": True},
                 {"cifar100": True}),
}


def miniature(source: Path, folder: Path) -> tuple[Path, contextlib.AbstractContextManager]:
    """A copy of ``source`` cut down to run here, and the context to run it in."""
    data = yaml.safe_load(source.read_text())
    fixed = data.setdefault("fixed", {})
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    dataset = fixed.get("dataset", "digits")
    if dataset in FAKES:
        write, kwargs, checksums = FAKES[dataset]
        root = folder / "data"
        write(root, **kwargs)
        fixed["data_root"], fixed["download"] = str(root), False
        fixed.pop("train_per_class", None)  # the stand-in is tiny already
        if checksums is not None:
            context = fake_cifar_checksums(root, **checksums)
    scheduler = data.get("scheduler") or {}
    asha = scheduler.get("type", "asha") == "asha"
    fixed["epochs"] = 2 if asha else 1
    if asha:
        scheduler["grace_period"] = 1
        scheduler.pop("max_t", None)
        data["scheduler"] = scheduler
    seeds = fixed.pop("seeds", None) or [fixed.pop("seed", 0)]
    fixed["seeds"] = seeds[:1]
    if fixed.get("device") == "cuda":
        del fixed["device"]
    teacher = data.get("teacher")
    if isinstance(teacher, dict) and "path" not in teacher:
        teacher["epochs"] = 1
    search = data.setdefault("search", {})
    search["num_samples"] = min(search.get("num_samples") or TRIALS, TRIALS)
    search["max_concurrent"] = min(search.get("max_concurrent", 1), 2)
    data["resources"] = {"cpus": 1, "gpus": 0}
    path = folder / source.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, context


def searched_configs(experiment_dir: Path) -> dict[str, dict[str, Any]]:
    """Ray trial id -> the parameters the searcher gave the trial (Ray's ``params.json``)."""
    return {folder.name.split("_")[2]: json.loads((folder / "params.json").read_text())
            for folder in experiment_dir.glob("run_trial_*")}


def check_configs(space: SearchSpace, configs: list[dict[str, Any]]) -> None:
    """Each config sets exactly its active parameters, to allowed values; none twice."""
    keys = [json.dumps(c, sort_keys=True) for c in configs]
    assert len(set(keys)) == len(keys), f"a configuration trained twice: {keys}"
    for config in configs:
        active = {p.name for p in space.parameters if p.is_active(config)}
        assert set(config) == active, (config, active)
        for p in space.parameters:
            if p.name in config and p.choices is not None:
                value = config[p.name]
                assert (tuple(value) if isinstance(value, list) else value) in p.choices
    if space.search.sampler == "grid":
        grid = {json.dumps(c, sort_keys=True) for c in expand_grid(space)}
        assert set(keys) <= grid, set(keys) - grid


@pytest.mark.slow
@pytest.mark.parametrize("source", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_space_runs_end_to_end(source: Path, tmp_path: Path, ray_session: None,
                                       mlflow_template: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path, context = miniature(source, tmp_path)
    space = load_space(path)
    size = len(expand_grid(space)) if space.search.sampler == "grid" else None
    store = new_store(tmp_path / "store", mlflow_template)
    uri, storage = sqlite_uri(store), store / "ray"
    flags = ["--mlflow-uri", uri, "--storage", str(storage)]
    with context:
        code = main(["search", str(path), *flags])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    expected = space.search.num_samples
    assert expected == (min(TRIALS, size) if size else TRIALS)

    tracker = Tracker(uri)
    assert tracker.sweep_run(space.name).info.status == "FINISHED"
    runs = tracker.trial_runs(space.name)
    assert len(runs) == expected and runs["trial_id"].is_unique, runs[["trial_id", "status"]]
    assert set(runs["status"]) <= {"FINISHED", "KILLED"}, runs[["trial_id", "status"]]
    assert (runs["status"] == "FINISHED").any()
    configs = searched_configs(storage / space.name)
    assert set(configs) == set(runs["trial_id"])
    check_configs(space, list(configs.values()))

    assert main(["best", space.name, *flags, "--format", "json"]) == 0
    best = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finished = set(runs.loc[runs["status"] == "FINISHED", "trial_id"])
    assert best and {row["trial_id"] for row in best} <= finished
    assert best[0][space.metrics[0]] is not None


# -- YAML examples in the docs ------------------------------------------------------------------
def yaml_examples() -> list[tuple[str, str]]:
    """(``file:line``, text) of every fenced ```yaml block in README.md and docs/."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.S | re.M):
            line = text[:match.start()].count("\n") + 1
            found.append((f"{doc.relative_to(REPO)}:{line}", match.group(1)))
    return found


EXAMPLES = yaml_examples()


def complete_example() -> dict[str, Any]:
    """The one complete space among the examples (the base fragments are loaded over)."""
    complete = [yaml.safe_load(t) for _, t in EXAMPLES if "parameters" in yaml.safe_load(t)]
    assert len(complete) >= 1
    return complete[0]


def test_the_docs_have_yaml_examples() -> None:
    assert any(where.startswith("docs/search-space.md") for where, _ in EXAMPLES)


@pytest.mark.parametrize("where,text", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_yaml_example_in_the_docs_loads(where: str, text: str, tmp_path: Path,
                                        teacher_path: Path) -> None:
    example = yaml.safe_load(text)
    assert isinstance(example, dict), where
    data = example if "parameters" in example else {**complete_example(), **example}
    teacher = data.get("teacher")
    if isinstance(teacher, dict) and "path" in teacher:  # an example path: give it a teacher
        target = tmp_path / teacher["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(teacher_path, target)
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_space(path)
