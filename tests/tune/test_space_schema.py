"""The JSON Schema of search-space files (``kdtune space-schema``): what an editor checks a
file against agrees with the loader, on every shipped space and every YAML example of the
docs, for method plugins, and for YAML 1.1 and 1.2 booleans."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kdtune.errors import KdtuneError
from kdtune.tune.space import load_space
from kdtune.tune.space_schema import json_schema

from .test_shipped_spaces import EXAMPLES
from .test_space import BASE, edit, write

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))


class Yaml12Loader(yaml.SafeLoader):
    """YAML as an editor reads it (1.2): only true/false are booleans; yes, no, on, off are
    strings."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                                   re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(validator: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}"
            for e in validator.iter_errors(data)]




@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
@pytest.mark.parametrize("loader", [yaml.SafeLoader, Yaml12Loader], ids=["yaml1.1", "yaml1.2"])
def test_every_shipped_space_fits_the_schema(path: Path, loader: type,
                                             validator: jsonschema.Draft202012Validator) -> None:
    assert problems(validator, yaml.load(path.read_text(), Loader=loader)) == []


@pytest.mark.parametrize("where,text", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_yaml_example_of_the_docs_fits_the_schema(
        where: str, text: str, validator: jsonschema.Draft202012Validator) -> None:
    """Fragments are checked over the first complete example, as the loader's test loads
    them (tests/tune/test_shipped_spaces.py)."""
    complete = next(yaml.safe_load(t) for _, t in EXAMPLES if "parameters" in yaml.safe_load(t))
    example = yaml.safe_load(text)
    data = example if "parameters" in example else {**complete, **example}
    assert problems(validator, data) == [], where


@pytest.mark.parametrize(("data", "path"), [
    (edit(searchh={}), ""),
    (edit(parameters__alpha__type="flaot"), "parameters.alpha"),
    (edit(parameters__alpha__hihg=1), "parameters.alpha"),
    (edit(parameters__seed={"type": "categorical", "choices": [0, 1]}), "parameters"),
    (edit(parameters__hidden={"type": "int", "low": 8, "high": 64}), "parameters.hidden"),
    (edit(parameters__method__choices=["none", "rkd5"]), "parameters.method"),
    (edit(fixed__epochs="many"), "fixed"),
    (edit(fixed__amp="maybe"), "fixed"),
    (edit(search__num_samples=0), "search"),
    (edit(scheduler={"type": "none", "grace_period": 2}), "scheduler"),
    (edit(resources={"cpus": 1, "gpus": -1}), "resources"),
    (edit(objective={"metric": "val_acc"}), "objective"),
    (edit(teacher={"path": "t.pt", "model": "mlp"}), "teacher"),
    (edit(parameters__alpha__when={"methd": ["vanilla"]}), "parameters.alpha"),
])
def test_the_schema_and_the_loader_refuse_alike(data: dict[str, Any], path: str,
                                                validator: jsonschema.Draft202012Validator,
                                                tmp_path: Path) -> None:
    found = problems(validator, data)
    assert found and any(p.startswith(path) for p in found), found
    with pytest.raises(KdtuneError):
        load_space(write(tmp_path, data))


def test_true_false_keys_take_yaml_1_1_and_1_2_words(
        validator: jsonschema.Draft202012Validator, tmp_path: Path) -> None:
    """``amp: off`` is false to PyYAML (YAML 1.1) and the string "off" to an editor (YAML 1.2):
    both the loader and the schema take either; a key that takes names says what happened."""
    text = yaml.safe_dump(BASE, sort_keys=False).replace(
        "  batch_size: 32\n", "  batch_size: 32\n  amp: off\n  download: NO\n")
    path = tmp_path / "words.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)["fixed"]["amp"] is False
    assert yaml.load(text, Loader=Yaml12Loader)["fixed"]["amp"] == "off"
    for data in (yaml.safe_load(text), yaml.load(text, Loader=Yaml12Loader)):
        assert problems(validator, data) == []
    space = load_space(path)
    assert space.fixed["amp"] is False and space.fixed["download"] is False
    path.write_text(text.replace("amp: off", "amp: 'off'").replace("NO", "'NO'"))
    assert load_space(path).fixed == space.fixed
    for bad, shown in ((edit(fixed__schedule=False), "fixed.schedule: expected a string, got "
                                                     "False; YAML 1.1 reads an unquoted"),
                       (edit(scheduler={"type": False}), "scheduler.type: unknown scheduler "
                                                         "False; choose one of: asha, none")):
        with pytest.raises(KdtuneError, match=re.escape(shown)):
            load_space(write(tmp_path, bad))


def test_a_method_plugin_is_in_the_schema(validator: jsonschema.Draft202012Validator,
                                          tmp_path: Path) -> None:
    """The model is built from the registries when a file is loaded: a method registered now
    and its parameter are keys of parameters and fixed, in the schema and for the loader."""
    from kdtune.methods import Param, register_method, unregister_method

    def term(student_logits, teacher_logits, labels, *, temperature, gain):
        return (student_logits - teacher_logits).pow(2).mean(1) * gain

    register_method("gain_sq", params=[Param("gain", float, default=1.0, low=0)])(term)
    try:
        schema = json_schema()
        assert "gain_sq" in json.dumps(schema["$defs"]["Fixed"]["properties"]["method"])
        assert "gain" in schema["$defs"]["Parameters"]["properties"]
        data = edit(parameters__method__choices=["none", "vanilla", "two_temperature",
                                                 "gain_sq"],
                    parameters__gain={"type": "float", "low": 0.5, "high": 2,
                                      "when": {"method": ["gain_sq"]}})
        data["parameters"]["temperature"]["when"] = {"method": ["vanilla", "gain_sq"]}
        data["parameters"]["alpha"]["when"]["method"].append("gain_sq")
        assert problems(jsonschema.Draft202012Validator(schema), data) == []
        assert problems(validator, data)  # the schema of before the plugin does not know it
        assert load_space(write(tmp_path, data)).parameter("gain").high == 2
    finally:
        unregister_method("gain_sq")
    with pytest.raises(KdtuneError, match=r"parameters\.method\.choices: unknown method 'gain_sq'"):
        load_space(write(tmp_path, data))  # unregistered: a model without it


def test_kdtune_space_schema_prints_it_without_torch_ray_or_mlflow() -> None:
    code = ("import sys; from kdtune.cli import main; code = main(['space-schema']); "
            "assert not {'torch', 'ray', 'mlflow', 'optuna'} & set(sys.modules), 'imported'; "
            "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert json.loads(done.stdout) == json.loads(json.dumps(json_schema()))
