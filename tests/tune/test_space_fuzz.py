"""Bad search-space files of every shape: random mutations of a valid space (wrong types,
unknown keys, bad ranges, bad conditions) are refused with one line naming the file -- a
:class:`KdtuneError` (exit code 2), never a traceback -- and ``kdtune search`` on such a file
prints that line alone, exits 2 and writes nothing."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdtune.errors import KdtuneError
from kdtune.tune.space import SearchSpace, load_space

from .test_space import BASE, edit

ROOT = Path(__file__).resolve().parents[2]

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(),
    st.text(max_size=6), st.lists(st.integers(-3, 70), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 5), max_size=2),
    st.sampled_from(["on", "off", "yes", "no", "none", "vanilla", "grid", "asha", "categorical",
                     "int", "float", "logfloat", "300-300", "val_loss", "mlp", "cuda"]))
PARAMS = [*BASE["parameters"], "epochs", "model", "seed", "nckd_weight", "lrr"]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into ``node`` (mapping keys and list indices)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else []
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


PATHS = paths(BASE)


def parent(data: Any, path: tuple[Any, ...]) -> Any:
    """The mapping or list holding ``path``'s last key, or None when a mutation removed it."""
    node = data
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    ok = (isinstance(node, dict) and path[-1] in node) or \
        (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node))
    return node if ok else None


@st.composite
def mutated_spaces(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        holder = parent(data, path)
        if holder is None:
            continue
        kind = draw(st.sampled_from(["value", "value", "delete", "unknown", "range", "when"]))
        if kind == "value":
            holder[path[-1]] = draw(VALUES)
        elif kind == "delete":
            del holder[path[-1]]
        elif kind == "unknown" and isinstance(holder, dict):
            holder[draw(st.text(min_size=1, max_size=6) | st.sampled_from(
                [f"{path[-1]}s", str(path[-1])[:-1] or "x", "when", "type", "choices"]))] = \
                draw(VALUES)
        elif kind == "range":
            name = draw(st.sampled_from(["alpha", "lr", "epochs"]))
            bounds = st.one_of(st.floats(-2, 2), st.integers(-3, 6), VALUES)
            data["parameters"][name] = {
                "type": draw(st.sampled_from(["int", "float", "logfloat", "categorical"])),
                "low": draw(bounds), "high": draw(bounds),
                **({"step": draw(bounds)} if draw(st.booleans()) else {})}
        elif kind == "when":
            name = draw(st.sampled_from(list(data["parameters"])))
            if isinstance(data["parameters"].get(name), dict):
                data["parameters"][name]["when"] = draw(st.one_of(VALUES, st.dictionaries(
                    st.sampled_from(PARAMS), st.one_of(VALUES, st.lists(VALUES, max_size=3)),
                    max_size=3)))
    return data


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_spaces())
def test_a_mutated_space_loads_or_is_one_line(data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "space.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            assert isinstance(load_space(path), SearchSpace)
        except KdtuneError as exc:
            message = str(exc)
            assert message.startswith(f"{path}: ") and "\n" not in message, message
            assert "Traceback" not in message and "pydantic" not in message, message


@pytest.mark.parametrize("data", [
    edit(search__sampler="grid"),
    edit(parameters__alpha__when={"method": ["vanila"]}, fixed__epochs="many"),
    edit(**{"parameters__lr__low": 0.5, "parameters__lr__high": 0.1, "search\nx": 1}),
], ids=["grid-float", "two-errors", "newline-key"])
def test_kdtune_search_on_a_bad_space_is_one_line_and_writes_nothing(data: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KDTUNE_"))}
    done = subprocess.run([sys.executable, "-m", "kdtune", "search", str(bad)], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"kdtune search: error: {bad}: "), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
