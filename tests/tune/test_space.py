"""Search-space files: loading, validation errors, define-by-run sampling, grid expansion."""

from __future__ import annotations

import copy
import functools
import hashlib
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from kdtune.config import TrainConfig
from kdtune.errors import KdtuneError
from kdtune.tune.space import (
    SearchSpace,
    expand_grid,
    grid_points,
    load_space,
    suggest,
    teacher_config,
    trial_config,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))
KD = ("alpha", "temperature", "t_right", "t_wrong")

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE: dict[str, Any] = {
    "name": "t",
    "fixed": {"dataset": "digits", "epochs": 4, "batch_size": 32},
    "teacher": {"model": "mlp", "hidden": [32], "epochs": 2},
    "parameters": {
        "method": {"type": "categorical", "choices": ["none", "vanilla", "two_temperature"]},
        "alpha": {"type": "float", "low": 0.1, "high": 0.9,
                  "when": {"method": ["vanilla", "two_temperature"]}},
        "temperature": {"type": "categorical", "choices": [2, 4],
                        "when": {"method": ["vanilla"]}},
        "t_right": {"type": "categorical", "choices": [2, 5],
                    "when": {"method": ["two_temperature"]}},
        "t_wrong": {"type": "categorical", "choices": [10, 20, 50],
                    "when": {"method": ["two_temperature"]}},
        "hidden": {"type": "categorical", "choices": [[16], [32]]},
        "lr": {"type": "logfloat", "low": 0.01, "high": 0.2},
    },
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "search": {"num_samples": 4, "max_concurrent": 1, "sampler": "tpe", "seed": 0},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpus": 1, "gpus": 0},
}
DELETE = object()


def edit(**changes: Any) -> dict[str, Any]:
    """BASE with dotted keys (``parameters__alpha__type``) set, or removed with DELETE."""
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return data


def write(tmp_path: Path, data: dict[str, Any], name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def grid(**changes: Any) -> dict[str, Any]:
    """A small all-categorical conditional grid (34 configurations, see test_grid_small)."""
    base: dict[str, Any] = {
        "search__sampler": "grid", "search__num_samples": DELETE, "parameters__lr": DELETE,
        "parameters__alpha": {"type": "categorical", "choices": [0.1, 0.5],
                              "when": {"method": ["vanilla", "two_temperature"]}}}
    return edit(**{**base, **changes})


# -- the shipped files -------------------------------------------------------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_space_loads(path: Path) -> None:
    space = load_space(path)
    assert space.name == path.stem
    assert space.source == str(path) and Path(space.source).is_absolute()
    assert space.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    root = space.fixed.get("data_root")
    assert root is None or (Path(root).is_absolute() and "~" not in root)
    teacher = teacher_config(space)
    assert isinstance(teacher, TrainConfig) and teacher.method == "none"
    assert teacher.dataset == space.fixed["dataset"]
    if space.search.sampler == "grid":
        configs = expand_grid(space)
        assert len(configs) == space.search.num_samples
        for params in configs[:: max(1, len(configs) // 10)]:
            assert isinstance(trial_config(space, params), TrainConfig)


def test_search_spaces_folder_holds_exactly_the_known_spaces() -> None:
    assert {p.stem for p in SHIPPED} == {"digits_quick", "digits_methods", "mnist_mlp",
                                         "cifar10_resnet_blocks", "cifar100_thesis",
                                         "cifar100_thesis_wrn", "alpha_study_good",
                                         "alpha_study_weak", "digits_kinds",
                                         "cifar100_kinds_wrn", "cifar100_kinds_resnet"}


def test_alpha_study_pair_differs_in_the_teacher_alone() -> None:
    """11 alphas from 0 (soft targets alone) to 1 (no KD), 3 seeds, few images per class,
    every alpha trained to the end; the weak teacher is small and trained for few epochs."""
    good, weak = (load_space(ROOT / "search_spaces" / f"alpha_study_{k}.yaml")
                  for k in ("good", "weak"))
    for space in (good, weak):
        assert [c["alpha"] for c in expand_grid(space)] == [i / 10 for i in range(11)]
        assert space.seeds == (0, 1, 2) and space.search.sampler == "grid"
        assert space.scheduler.type == "none" and space.fixed["train_per_class"] == 10
        assert space.fixed["dataset"] == "digits" and space.fixed["method"] == "vanilla"
    assert good.fixed == weak.fixed and good.parameters == weak.parameters
    strong, small = teacher_config(good), teacher_config(weak)
    assert strong is not None and small is not None
    assert strong.hidden == (1200, 1200) and small.hidden == (32,)
    assert small.epochs < strong.epochs / 10


def test_digits_quick_is_the_quick_default() -> None:
    space = load_space(ROOT / "search_spaces" / "digits_quick.yaml")
    assert space.fixed["dataset"] == "digits"
    assert (space.search.num_samples, space.search.max_concurrent) == (16, 2)
    assert space.search.sampler == "tpe" and not space.multi_objective
    assert (space.scheduler.type, space.scheduler.grace_period) == ("asha", 3)
    assert space.scheduler.max_t == space.fixed["epochs"] == 15
    assert teacher_config(space).hidden == (1200, 1200)  # type: ignore[union-attr]
    assert space.seeds == (0,) and space.metrics == ["val_accuracy"] and space.modes == ["max"]


def test_grid_sizes_of_shipped_grids() -> None:
    # mnist_mlp: 3 widths x (none + vanilla x 3 temperatures) = 3 x 4 = 12
    # cifar10_resnet_blocks: 3 block layouts x 2 stem strides x (none + vanilla x 2 LS x 2 T
    #   + dkd x 2 T + dist x 2 T) = 6 x 9 = 54
    # cifar100_thesis: the thesis's 81, plus vanilla+LS 9, dkd 18 and dist 9 -> 117
    sizes = {p.stem: len(expand_grid(load_space(p))) for p in SHIPPED
             if load_space(p).search.sampler == "grid"}
    assert sizes == {"mnist_mlp": 12, "cifar10_resnet_blocks": 54, "cifar100_thesis": 117,
                     "cifar100_thesis_wrn": 117, "alpha_study_good": 11,
                     "alpha_study_weak": 11}


@pytest.mark.parametrize("name", ["cifar100_thesis", "cifar100_thesis_wrn"])
def test_thesis_grids_keep_the_thesis_configurations(name: str) -> None:
    """7 single-T methods x 3 alpha x 3 T = 63, plus two_temperature x 3 alpha x 2 t_right x
    3 t_wrong = 18: the thesis's 81, unchanged, beside the newer methods' branches."""
    grid = expand_grid(load_space(ROOT / "search_spaces" / f"{name}.yaml"))
    newer = [c for c in grid if c["method"] in ("dkd", "dist")
             or c.get("logit_standardization") is True]
    thesis = [{k: v for k, v in c.items() if k != "logit_standardization"}
              for c in grid if c not in newer]
    single_t = ["vanilla", "spherical", "rkd_v1", "rkd_v2", "rkd_v3", "rkd_v4", "earth_mover"]
    expected = [{"method": m, "alpha": a, "temperature": t} for m in single_t
                for a in (0.1, 0.3, 0.5) for t in (2, 5, 10)]
    expected += [{"method": "two_temperature", "alpha": a, "t_right": r, "t_wrong": w}
                 for a in (0.1, 0.3, 0.5) for r in (2, 5) for w in (10, 20, 50)]
    key = lambda c: sorted(c.items())  # noqa: E731  (2 == 2.0: choices are coerced to floats)
    assert sorted(thesis, key=key) == sorted(expected, key=key) and len(thesis) == 81
    assert sorted(c["method"] for c in newer) == ["dist"] * 9 + ["dkd"] * 18 + ["vanilla"] * 9
    assert all(c["kd_warmup"] == 20 and c["nckd_weight"] in (2, 8) for c in newer
               if c["method"] == "dkd")


# -- sampling ----------------------------------------------------------------------------------
def test_suggest_keeps_conditional_parameters_absent(tmp_path: Path) -> None:
    space = load_space(ROOT / "search_spaces" / "digits_quick.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(120):
        trial = study.ask()
        params = suggest(trial, space)
        method = params["method"]
        seen.add(method)
        assert set(params) == set(trial.params)
        assert isinstance(params["hidden"], list) and isinstance(trial.params["hidden"], str)
        if method == "none":
            assert not set(KD) & set(params)
        elif method == "two_temperature":
            assert {"alpha", "t_right", "t_wrong"} <= set(params)
            assert "temperature" not in params
        else:
            assert {"alpha", "temperature"} <= set(params)
            assert not {"t_right", "t_wrong"} & set(params)
        study.tell(trial, 0.5)
        assert trial_config(space, params, seed=3).seed == 3
    assert seen == {"none", "vanilla", "spherical", "two_temperature"}


def test_suggest_with_fixed_trial_decodes_lists() -> None:
    space = load_space(ROOT / "search_spaces" / "cifar10_resnet_blocks.yaml")
    trial = optuna.trial.FixedTrial({"blocks": "2-2-0-0", "stem_stride": 4, "method": "none"})
    params = suggest(trial, space)
    assert params == {"blocks": [2, 2, 0, 0], "stem_stride": 4, "method": "none"}
    cfg = trial_config(space, params)
    assert cfg.blocks == (2, 2, 0, 0) and cfg.block == "basic" and cfg.method == "none"


def test_suggest_partial_pickles() -> None:
    space = load_space(ROOT / "search_spaces" / "digits_quick.yaml")
    fn = pickle.loads(pickle.dumps(functools.partial(suggest, space=space)))
    params = fn(optuna.trial.FixedTrial({"method": "none", "hidden": "32", "lr": 0.05}))
    assert params == {"method": "none", "hidden": [32], "lr": 0.05}
    assert pickle.loads(pickle.dumps(space)) == space


def test_int_and_float_steps(tmp_path: Path) -> None:
    data = edit(parameters__epochs={"type": "int", "low": 2, "high": 4, "step": 2},
                parameters__momentum={"type": "float", "low": 0.5, "high": 0.9, "step": 0.2},
                fixed__epochs=DELETE)
    space = load_space(write(tmp_path, data))
    assert space.scheduler.max_t == 4
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        params = suggest(study.ask(), space)
        assert params["epochs"] in (2, 4)
        assert min(abs(params["momentum"] - v) for v in (0.5, 0.7, 0.9)) < 1e-9


# -- grid expansion ----------------------------------------------------------------------------
def test_grid_small_conditional(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, grid()))
    configs = expand_grid(space)
    # per hidden width: none 1 + vanilla (2 alpha x 2 T) 4 + two_temperature
    # (2 alpha x 2 t_right x 3 t_wrong) 12 = 17; two widths -> 34
    assert len(configs) == 34 == space.search.num_samples
    assert len({yaml.safe_dump(c) for c in configs}) == 34
    assert configs[0] == {"method": "none", "hidden": [16]}
    assert configs == expand_grid(load_space(write(tmp_path, grid(), "again.yaml")))
    for c in configs:
        assert ("temperature" in c) == (c["method"] == "vanilla")
        assert ("t_wrong" in c) == (c["method"] == "two_temperature")


def test_grid_nested_condition(tmp_path: Path) -> None:
    data = grid(parameters={
        "method": {"type": "categorical", "choices": ["none", "vanilla"]},
        "temperature": {"type": "categorical", "choices": [2, 4], "when": {"method": ["vanilla"]}},
        "alpha": {"type": "categorical", "choices": [0.1, 0.5], "when": {"temperature": [4]}}})
    configs = expand_grid(load_space(write(tmp_path, data)))
    # none; vanilla T=2; vanilla T=4 x alpha {0.1, 0.5}
    assert configs == [{"method": "none"}, {"method": "vanilla", "temperature": 2.0},
                       {"method": "vanilla", "temperature": 4.0, "alpha": 0.1},
                       {"method": "vanilla", "temperature": 4.0, "alpha": 0.5}]


def test_grid_num_samples_may_be_smaller(tmp_path: Path) -> None:
    assert load_space(write(tmp_path, grid(search__num_samples=5))).search.num_samples == 5


def test_expand_grid_refuses_numeric_parameters() -> None:
    space = load_space(ROOT / "search_spaces" / "digits_quick.yaml")
    with pytest.raises(KdtuneError, match=r"parameters\.alpha\.type: a grid"):
        expand_grid(space)


# -- paths, teacher, defaults ------------------------------------------------------------------
def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "teacher.pt").write_bytes(b"x")
    data = edit(fixed__dataset="mnist", fixed__data_root="data", teacher={"path": "teacher.pt"})
    space = load_space(write(tmp_path / "sub", data))
    assert space.fixed["data_root"] == str(tmp_path / "sub" / "data")
    assert space.teacher is not None and space.teacher.path == str(tmp_path / "sub/teacher.pt")
    assert teacher_config(space) is None
    home = load_space(write(tmp_path, edit(fixed__dataset="mnist", fixed__data_root="~/d")))
    assert home.fixed["data_root"] == str(Path.home() / "d")


def test_teacher_config_takes_data_from_fixed(tmp_path: Path) -> None:
    data = edit(fixed__split_seed=3, fixed__train_per_class=20, fixed__amp=False)
    cfg = teacher_config(load_space(write(tmp_path, data)))
    assert cfg is not None
    assert (cfg.split_seed, cfg.train_per_class, cfg.amp) == (3, 20, False)
    assert (cfg.method, cfg.hidden, cfg.epochs) == ("none", (32,), 2)


def test_defaults_and_multi_objective(tmp_path: Path) -> None:
    data = edit(objective=[{"metric": "val_accuracy"}, {"metric": "latency_ms_b1"}],
                search={"num_samples": 8}, scheduler=DELETE, resources=DELETE,
                fixed__seeds=[0, 1], name=DELETE)
    space = load_space(write(tmp_path, data, "multi.yaml"))
    assert space.name == "multi" and space.multi_objective
    assert space.metrics == ["val_accuracy", "latency_ms_b1"] and space.modes == ["max", "min"]
    assert space.search.sampler == "nsga2" and space.search.max_concurrent == 1
    assert space.scheduler.type == "asha" and space.scheduler.max_t == 4
    assert (space.resources.cpus, space.resources.gpus) == (1.0, 0.0)
    assert space.seeds == (0, 1) and "seeds" not in space.fixed
    assert isinstance(space, SearchSpace)


def test_fractional_gpu(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, edit(resources={"cpus": 1, "gpus": 0.25})))
    assert space.resources.gpus == 0.25


def test_space_module_imports_neither_ray_nor_optuna() -> None:
    code = ("import sys, kdtune.tune.space, kdtune.tune.sampling; "
            "assert not {'ray', 'optuna'} & set(sys.modules), 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# -- errors ------------------------------------------------------------------------------------
TWO_T = ("parameters.method.choices: method two_temperature needs {}: add {} under parameters "
         "with when: {{method: [two_temperature]}} or under fixed")
ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("bad-type", edit(parameters__alpha__type="flaot"),
     "parameters.alpha.type: unknown type 'flaot'; choose one of: categorical, int, float, "
     "logfloat (did you mean 'float'?)"),
    ("no-type", edit(parameters__alpha__type=DELETE), "parameters.alpha.type: missing"),
    ("empty-choices", edit(parameters__hidden__choices=[]), "parameters.hidden.choices: empty"),
    ("choices-not-list", edit(parameters__hidden__choices="16"),
     "parameters.hidden.choices: expected a list"),
    ("duplicate-choice", edit(parameters__hidden__choices=[[16], [16]]),
     "parameters.hidden.choices: duplicate choice [16]"),
    ("bad-when-value", edit(parameters__alpha__when={"method": ["vanila"]}),
     "parameters.alpha.when.method: impossible condition: 'vanila' is not a choice of method "
     "(choices: none, vanilla, two_temperature) (did you mean 'vanilla'?)"),
    ("empty-when", edit(parameters__alpha__when={"method": []}),
     "parameters.alpha.when.method: empty"),
    ("when-later", edit(parameters__alpha__when={"hidden": [[16]]}),
     "parameters.alpha.when.hidden: 'hidden' is not a parameter declared before alpha"),
    ("when-numeric", edit(parameters__temperature__when={"lr": [0.1]}),
     "parameters.temperature.when.lr: 'lr' is not a parameter declared before temperature"),
    ("when-on-float", edit(parameters__t_right__when={"alpha": [0.1]}),
     "parameters.t_right.when.alpha: conditions need a categorical parameter; alpha is float"),
    ("when-fixed", edit(fixed__model="mlp", parameters__alpha__when={"model": ["mlp"]}),
     "parameters.alpha.when.model: model is under fixed"),
    ("never-active", edit(parameters__t_right__when={"method": ["two_temperature"],
                                                     "temperature": [2]}),
     "parameters.t_right.when: impossible condition: t_right is never active"),
    ("unknown-method", edit(parameters__method__choices=["none", "rkd5"]),
     "parameters.method.choices: unknown method 'rkd5'; choose one of: none, vanilla"),
    ("unknown-model", edit(parameters__model={"type": "categorical", "choices": ["mpl"]}),
     "parameters.model.choices: unknown model 'mpl'"),
    ("low-ge-high", edit(parameters__alpha__low=0.9, parameters__alpha__high=0.1),
     "parameters.alpha.low: low 0.9 must be < high 0.1"),
    ("no-high", edit(parameters__alpha__high=DELETE), "parameters.alpha.high: missing"),
    ("log-low", edit(parameters__lr__low=0), "parameters.lr.low: a logfloat needs low > 0"),
    ("alpha-range", edit(parameters__alpha__high=1.5),
     "parameters.alpha.high: alpha 1.5 is outside [0, 1]"),
    ("T-range", edit(parameters__temperature__choices=[2, -1]),
     "parameters.temperature.choices: temperature -1 must be > 0"),
    ("int-not-int", edit(parameters__epochs={"type": "int", "low": 1.5, "high": 4},
                         fixed__epochs=DELETE),
     "parameters.epochs.low: expected an integer, got 1.5"),
    ("int-step", edit(parameters__epochs={"type": "int", "low": 1, "high": 4, "step": 2},
                      fixed__epochs=DELETE),
     "parameters.epochs.step: high - low (3) must be a multiple of step 2"),
    ("type-for-field", edit(parameters__hidden={"type": "int", "low": 8, "high": 64}),
     "parameters.hidden.type: hidden takes lists of integers; use type categorical"),
    ("float-for-int", edit(parameters__epochs={"type": "float", "low": 1, "high": 4},
                           fixed__epochs=DELETE),
     "parameters.epochs.type: epochs takes integers; use type int or categorical"),
    ("categorical-key", edit(parameters__hidden__low=1),
     "parameters.hidden.low: unknown key 'low'; allowed: type, choices, when"),
    ("param-key-typo", edit(parameters__alpha__hihg=1),
     "parameters.alpha.hihg: unknown key 'hihg'; allowed: type, low, high, step, when "
     "(did you mean 'high'?)"),
    ("not-a-field", edit(parameters__lrr={"type": "float", "low": 0.1, "high": 0.2}),
     "parameters.lrr: unknown parameter 'lrr'"),
    ("also-fixed", edit(fixed__lr=0.1), "parameters.lr: also set under fixed.lr"),
    ("seed-param", edit(parameters__seed={"type": "categorical", "choices": [0, 1]}),
     "parameters.seed: seed cannot be searched: set the seeds under fixed.seeds"),
    ("data-param", edit(parameters__split_seed={"type": "categorical", "choices": [0, 1]}),
     "parameters.split_seed: split_seed cannot be searched"),
    ("no-parameters", edit(parameters={}), "parameters: expected a mapping"),
    ("top-key", edit(searchh={}), "searchh: unknown key 'searchh'"),
    ("search-key", edit(search__num_sample=3),
     "search.num_sample: unknown key 'num_sample'; allowed: num_samples, max_concurrent, "
     "sampler, seed, warm_start (did you mean 'num_samples'?)"),
    ("warm-start-type", edit(search__warm_start="other"),
     "search.warm_start: expected {from: SWEEP, top: K}, got 'other'"),
    ("warm-start-key", edit(search__warm_start={"form": "other"}),
     "search.warm_start.form: unknown key 'form'; allowed: from, top (did you mean 'from'?)"),
    ("warm-start-from", edit(search__warm_start={"from": "a b"}),
     "search.warm_start.from: expected a sweep name, got 'a b'"),
    ("warm-start-top", edit(search__warm_start={"from": "other", "top": 99}),
     "search.warm_start.top: 99 is more than num_samples 4"),
    ("warm-start-grid", edit(search__warm_start={"from": "other"}, search__sampler="grid",
                             search__num_samples=DELETE, parameters__lr=DELETE,
                             parameters__alpha={"type": "categorical", "choices": [0.1, 0.5],
                                                "when": {"method": ["vanilla",
                                                                    "two_temperature"]}}),
     "search.warm_start: a grid runs its own configurations"),
    ("fixed-key", edit(fixed__epoch=3), "fixed.epoch: unknown key 'epoch'"),
    ("fixed-type", edit(fixed__epochs="many"), "fixed.epochs: expected an integer, got 'many'"),
    ("fixed-value", edit(fixed__dataset="digitz"),
     "fixed.dataset: unknown dataset 'digitz'; choose one of:"),
    ("fixed-teacher", edit(fixed__teacher="t.pt"), "fixed.teacher: not allowed here"),
    ("seeds-and-seed", edit(fixed__seeds=[0], fixed__seed=1),
     "fixed.seeds: give seeds or seed, not both"),
    ("seeds-dup", edit(fixed__seeds=[1, 1]), "fixed.seeds: duplicate seeds"),
    ("no-t-right", edit(parameters__t_right=DELETE), TWO_T.format("t_right", "it")),
    ("no-t-right-t-wrong", edit(parameters__t_right=DELETE, parameters__t_wrong=DELETE),
     TWO_T.format("t_right and t_wrong", "them")),
    ("alpha-for-none", edit(parameters__alpha__when=DELETE),
     "parameters.alpha: active with method none, which does not use alpha; add when: "
     "{method: [vanilla, two_temperature]}"),
    ("T-for-two-T", edit(parameters__temperature__when={"method": ["vanilla", "two_temperature"]}),
     "parameters.temperature: active with method two_temperature, which does not use "
     "temperature; add when: {method: [vanilla]}"),
    ("no-teacher", edit(teacher=DELETE), "teacher: missing; method vanilla needs a teacher"),
    ("teacher-file", edit(teacher={"path": "missing.pt"}), "teacher.path: no such file"),
    ("teacher-both", edit(teacher={"path": "t.pt", "model": "mlp"}),
     "teacher.model: not allowed beside teacher.path"),
    ("teacher-data", edit(teacher__dataset="mnist"),
     "teacher.dataset: not allowed here: the teacher takes it from fixed"),
    ("teacher-value", edit(teacher__epochs=0), "teacher: epochs 0 must be >= 1"),
    ("teacher-option", edit(teacher__model="resnet18"),
     "teacher.hidden: model 'resnet18' does not take 'hidden'"),
    ("model-option", edit(fixed__model="resnet18"),
     "parameters.hidden: model 'resnet18' does not take 'hidden'; it takes: stem_stride, width"),
    ("model-option-choice", edit(parameters__model={"type": "categorical",
                                                    "choices": ["mlp", "wrn_16_1"]}),
     "parameters.model.choices: model 'wrn_16_1' does not take 'hidden'"),
    ("test-accuracy", edit(objective={"metric": "test_accuracy", "mode": "max"}),
     "objective.metric: test_accuracy is for the final report, never for choosing"),
    ("bad-metric", edit(objective={"metric": "val_acc", "mode": "max"}),
     "objective.metric: unknown metric 'val_acc'; choose one of: val_accuracy, val_loss, params, "
     "flops, latency_ms_b1, latency_ms_b256, speedup, train_time_s"),
    ("bad-mode", edit(objective={"metric": "val_accuracy", "mode": "maximize"}),
     "objective.mode: unknown mode 'maximize'; choose one of: max, min"),
    ("objective-key", edit(objective=[{"metric": "val_loss", "goal": "min"}]),
     "objective[0].goal: unknown key 'goal'"),
    ("objective-dup", edit(objective=[{"metric": "params"}, {"metric": "params"}],
                           search__sampler="nsga2", scheduler={"type": "none"}),
     "objective[1].metric: params is already an objective"),
    ("nsga2-one", edit(search__sampler="nsga2"),
     "search.sampler: nsga2 is for several objectives"),
    ("tpe-two", edit(objective=[{"metric": "val_accuracy"}, {"metric": "params"}]),
     "search.sampler: 2 objectives need sampler nsga2, not tpe"),
    ("grid-two", edit(objective=[{"metric": "val_accuracy"}, {"metric": "params"}],
                      search__sampler="grid"),
     "search.sampler: 2 objectives need sampler nsga2, not grid"),
    ("bad-sampler", edit(search__sampler="tpee"),
     "search.sampler: unknown sampler 'tpee'; choose one of: tpe, random, grid, nsga2"),
    ("grid-float", edit(search__sampler="grid"),
     "parameters.alpha.type: sampler grid takes only categorical parameters; alpha is float"),
    ("grid-too-many", grid(search__num_samples=50),
     "search.num_samples: 50 is more than the grid's 34 configurations"),
    ("no-num-samples", edit(search__num_samples=DELETE),
     "search.num_samples: missing; sampler tpe needs"),
    ("num-samples-type", edit(search__num_samples=0),
     "search.num_samples: expected an integer >= 1, got 0"),
    ("concurrency", edit(search__max_concurrent=0),
     "search.max_concurrent: expected an integer >= 1, got 0"),
    ("scheduler-type", edit(scheduler__type="hyperband"),
     "scheduler.type: unknown scheduler 'hyperband'; choose one of: asha, none"),
    ("scheduler-none-key", edit(scheduler={"type": "none", "grace_period": 2}),
     "scheduler.grace_period: only for type asha"),
    ("grace-gt-max-t", edit(scheduler__grace_period=6),
     "scheduler.grace_period: 6 is more than max_t 4"),
    ("max-t-gt-epochs", edit(scheduler__max_t=10),
     "scheduler.max_t: 10 is more than the 4 epochs a trial trains at most"),
    ("scheduler-metric", edit(scheduler__metric="val_acc"),
     "scheduler.metric: unknown scheduler metric 'val_acc'; choose one of: val_accuracy, "
     "val_loss"),
    ("scheduler-metric-final-only", edit(scheduler__metric="params"),
     "scheduler.metric: unknown scheduler metric 'params'"),
    ("scheduler-none-metric", edit(scheduler={"type": "none", "metric": "val_loss"}),
     "scheduler.metric: only for type asha"),
    ("reduction", edit(scheduler__reduction_factor=1),
     "scheduler.reduction_factor: expected a number > 1, got 1"),
    ("asha-final-metric", edit(objective=[{"metric": "params"}, {"metric": "val_accuracy"}],
                               search__sampler="nsga2"),
     "objective[0].metric: ASHA acts on the first objective, which must be reported every epoch"),
    ("gpu-cpu", edit(resources={"cpus": 0.5, "gpus": 0.25}),
     "resources.cpus: 0.5 must be >= 1 when gpus > 0"),
    ("gpu-whole", edit(resources={"cpus": 1, "gpus": 1.5}),
     "resources.gpus: 1.5: more than one GPU must be a whole number"),
    ("gpu-negative", edit(resources={"cpus": 1, "gpus": -1}),
     "resources.gpus: expected a number >= 0, got -1"),
    ("cuda-no-gpu", edit(fixed__device="cuda"), "resources.gpus: 0, but fixed.device is cuda"),
    ("resources-key", edit(resources={"cpu": 1}), "resources.cpu: unknown key 'cpu'"),
    ("name", edit(name="my sweep"), "name: expected a name of letters"),
    ("section-type", edit(search=[1]), "search: expected a mapping, got [1]"),
]


@pytest.mark.parametrize(("data", "expected"), [(d, e) for _, d, e in ERRORS],
                         ids=[i for i, _, _ in ERRORS])
def test_errors_name_file_and_key_path(tmp_path: Path, data: dict[str, Any],
                                       expected: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(KdtuneError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
    assert "\n" not in message


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(KdtuneError, match=r"nope\.yaml: no such search-space file"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters: [\n")
    with pytest.raises(KdtuneError, match=r"bad\.yaml: invalid YAML at line"):
        load_space(bad)
    bad.write_text("- 1\n")
    with pytest.raises(KdtuneError, match=r"bad\.yaml: expected a mapping"):
        load_space(bad)


def test_trial_config_rejects_bad_params() -> None:
    space = load_space(ROOT / "search_spaces" / "digits_quick.yaml")
    with pytest.raises(KdtuneError, match="unknown key 'lrr'"):
        trial_config(space, {"lrr": 0.1})


@pytest.mark.parametrize(("scheduler", "objective", "expected"), [
    ({}, {"metric": "val_accuracy", "mode": "max"}, ("val_accuracy", "max")),
    ({"metric": "val_loss"}, {"metric": "val_accuracy", "mode": "max"}, ("val_loss", "min")),
    ({"metric": "val_accuracy"}, {"metric": "val_loss", "mode": "min"}, ("val_accuracy", "max")),
    ({"metric": "val_loss"}, [{"metric": "params"}, {"metric": "val_accuracy"}],
     ("val_loss", "min")),  # a final-only first objective is fine once ASHA has its own metric
])
def test_asha_ranks_by_the_scheduler_metric(tmp_path: Path, scheduler: dict[str, Any],
                                            objective: Any, expected: tuple[str, str]) -> None:
    from kdtune.tune.scheduler import trial_scheduler
    from kdtune.tune.study import SweepStudy

    sampler = "nsga2" if isinstance(objective, list) else "tpe"
    space = load_space(write(tmp_path, edit(scheduler={"type": "asha", **scheduler},
                                            objective=objective, search__sampler=sampler)))
    assert (space.scheduler.metric, space.scheduler.mode) == expected
    rungs = trial_scheduler(space, SweepStudy(f"sqlite:///{tmp_path}/optuna.db", "s"))
    assert (rungs.metrics[0], rungs.modes[0]) == expected


def test_a_partial_grid_is_a_seeded_sample_in_grid_order(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, grid()))
    whole = expand_grid(space)
    assert grid_points(space) == whole == grid_points(space, len(whole))
    part = grid_points(space, 6)
    keys = [yaml.safe_dump(c) for c in whole]
    assert len(part) == 6 and len({yaml.safe_dump(c) for c in part}) == 6
    positions = [keys.index(yaml.safe_dump(c)) for c in part]
    assert positions == sorted(positions)  # in grid order
    assert positions != list(range(6))  # not just the first six
    assert grid_points(space, 6) == part  # seeded by search.seed
    other = load_space(write(tmp_path, grid(search__seed=1), "other.yaml"))
    assert grid_points(other, 6) != part


def test_a_feature_method_the_pair_cannot_serve_is_refused_at_load(tmp_path: Path) -> None:
    """Attention maps need conv feature maps: with an MLP student and teacher the space is
    refused when it loads (the pair is built on the meta device), not in every trial; a
    method that reads vectors loads."""
    def kinds(method: str) -> dict:
        return edit(parameters__feature_method={"type": "categorical",
                                                "choices": ["none", method]})
    with pytest.raises(KdtuneError, match=r"parameters.feature_method.choices: feature method "
                                          r"'at' needs feature maps.*\(in the trial \{"):
        load_space(write(tmp_path, kinds("at")))
    assert load_space(write(tmp_path, kinds("pkt"))).parameter("feature_method").choices == \
        ("none", "pkt")


@pytest.mark.parametrize(("raised", "refused"), [
    (ValueError("the adapter's shapes do not match"), True),  # a real error: one line
    (NotImplementedError("no meta kernel"), False),  # the meta device cannot run it: a skip
    (RuntimeError("Tensor.item() cannot be called on meta tensors"), False),
])
def test_a_feature_term_that_cannot_be_built_at_load(raised: Exception, refused: bool,
                                                     tmp_path: Path, caplog) -> None:
    """The load-time build of a pair's feature term lets a real error through as a one-line
    refusal naming the pair; what the meta device cannot run is skipped, logged once."""
    from kdtune.methods import register_feature_method, unregister_feature_method

    def build(*args: object) -> None:
        raise raised

    register_feature_method("unbuildable", inputs="embedding", defaults={"feature_weight": 1.0},
                            build=build)(lambda s, t: s[0].sum())
    try:
        space = edit(parameters__feature_method={"type": "categorical",
                                                 "choices": ["none", "unbuildable"]})
        if refused:
            with pytest.raises(KdtuneError) as info:
                load_space(write(tmp_path, space))
            message = str(info.value)
            assert "\n" not in message
            assert "parameters.feature_method.choices: building feature method 'unbuildable' " \
                   "for student 'mlp' and teacher 'mlp' failed: ValueError: the adapter's " \
                   "shapes do not match" in message, message
        else:
            with caplog.at_level("WARNING", logger="kdtune.tune.space_branches"):
                load_space(write(tmp_path, space))
            skipped = [r for r in caplog.records if "was skipped" in r.getMessage()]
            assert len(skipped) == 1, caplog.text
            assert type(raised).__name__ in skipped[0].getMessage()
    finally:
        unregister_feature_method("unbuildable")


def test_the_teacher_may_learn_from_more_of_the_training_part(tmp_path: Path) -> None:
    """``teacher.train_per_class`` (null: every training image) differs from the students'
    ``fixed.train_per_class``; the other data fields stay the sweep's."""
    space = load_space(write(tmp_path, edit(fixed__train_per_class=10,
                                            teacher__train_per_class=None)))
    teacher = teacher_config(space)
    assert teacher is not None and teacher.train_per_class is None
    assert trial_config(space, {"method": "none", "hidden": [16], "lr": 0.1}
                        ).train_per_class == 10
    with pytest.raises(KdtuneError, match=r"teacher\.split_seed: not allowed here: the "
                                          r"teacher takes it from fixed"):
        load_space(write(tmp_path, edit(teacher__split_seed=3)))


def test_feature_method_and_its_parameters_are_validated(tmp_path: Path) -> None:
    """``feature_method`` is searched beside ``method``; its parameters need a when: on it,
    kd_warmup is read by a feature term even with method none, and a feature term needs a
    teacher."""
    kinds = {"parameters__feature_method": {"type": "categorical", "choices": ["none", "sp"]},
             "parameters__feature_weight": {"type": "logfloat", "low": 1, "high": 1000,
                                            "when": {"feature_method": ["sp"]}},
             "parameters__kd_warmup": {"type": "categorical", "choices": [0, 2],
                                       "when": {"feature_method": ["sp"]}}}
    space = load_space(write(tmp_path, edit(**kinds)))
    cfg = trial_config(space, {"method": "none", "feature_method": "sp", "feature_weight": 5.0,
                               "kd_warmup": 2, "hidden": [16], "lr": 0.1})
    assert cfg.feature_method == "sp" and cfg.method_params["feature_weight"] == 5.0
    assert cfg.method_params["stages"] == "last"
    bad = {**kinds, "parameters__feature_weight": {"type": "float", "low": 1, "high": 10}}
    with pytest.raises(KdtuneError, match=r"parameters.feature_weight: active with feature "
                                          r"method none.*when: \{feature_method: \[sp\]\}"):
        load_space(write(tmp_path, edit(**bad)))
    alone = edit(**kinds, parameters__method={"type": "categorical", "choices": ["none"]},
                 teacher=DELETE)
    for key in ("alpha", "temperature", "t_right", "t_wrong"):
        alone["parameters"].pop(key)
    with pytest.raises(KdtuneError, match="teacher: missing; feature method sp needs a teacher"):
        load_space(write(tmp_path, alone))
