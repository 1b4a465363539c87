"""kdtune's modules import downwards only, and without circles.

Every ``.py`` file under ``kdtune/`` is parsed with :mod:`ast`; every import of a kdtune module
counts, at module level or inside a function (a lazy import is still a dependency), under
``if TYPE_CHECKING:`` too. Each module belongs to one layer of :data:`LAYERS`, bottom up; a
module may import its own layer and the layers below, never one above. Within a layer, the
import graph has no circle (nor across layers: a circle would need an upward import).

The layers, and why the modules the layering leaves open sit where they do:

* foundation: ``kdtune`` itself (the package root holds ``__version__`` only and re-exports
  nothing), errors, vocabulary, paths, urls, versions, cache, coerce (the one coercion of
  user values) and registry (the generic registry every registry below uses);
* config: the plain :class:`~kdtune.config.TrainConfig` value;
* components: data, models, methods (with ``methods.docs``, the generator of
  docs/methods.md) and metrics (accuracy, size, FLOPs, latency of a model; a method's peers
  report metrics with it);
* checks: resolve (user input -> a config, checked against the registries), no_effect (values
  that would change nothing), train_flags (``kdtune train``'s flags from the config's fields
  and the registries);
* run: trainer, teacher, teacher_store, report (printing and saving one run's results:
  the sweep's trials and ``kdtune train`` both print with it), demo;
* record: tracking and sqlite_store (the MLflow record the search writes and reads);
* tune: the search (Ray Tune + Optuna);
* results: best, finalize, export, sweep_results and sweep_report (``kdtune report``);
* cli: the command line and ``python -m kdtune``.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

import kdtune

KDTUNE = Path(kdtune.__file__).parent

#: The layers, bottom up: name -> module name prefixes (a package covers its submodules).
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("kdtune", "kdtune.errors", "kdtune.vocabulary", "kdtune.paths",
                   "kdtune.urls", "kdtune.versions", "kdtune.cache", "kdtune.coerce",
                   "kdtune.registry", "kdtune.pareto"),
    "config": ("kdtune.config",),
    "components": ("kdtune.data", "kdtune.models", "kdtune.methods", "kdtune.metrics"),
    "checks": ("kdtune.resolve", "kdtune.no_effect", "kdtune.train_flags"),
    "run": ("kdtune.trainer", "kdtune.teacher", "kdtune.teacher_store", "kdtune.report",
            "kdtune.demo"),
    "record": ("kdtune.tracking", "kdtune.sqlite_store", "kdtune.mlflow_store", "kdtune.runs"),
    "tune": ("kdtune.tune",),
    "results": ("kdtune.best", "kdtune.finalize", "kdtune.export", "kdtune.sweep_results",
                "kdtune.sweep_report"),
    "cli": ("kdtune.cli", "kdtune.cli_sweep", "kdtune.__main__"),
}

def module_name(path: Path) -> str:
    parts = path.relative_to(KDTUNE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kdtune_modules() -> dict[str, ast.Module]:
    files = sorted(KDTUNE.rglob("*.py"))
    assert len(files) > 20, files  # the package, not an empty folder
    return {module_name(f): ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
            for f in files}


def imports(name: str, tree: ast.Module, known: Iterable[str]) -> set[str]:
    """The kdtune modules ``name`` imports anywhere in its source (``from kdtune.x import y``
    counts as an import of ``kdtune.x.y`` when that is a module)."""
    known = set(known)
    package = name if name in known and any(k.startswith(name + ".") for k in known) else \
        name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "kdtune")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            if base.split(".")[0] != "kdtune":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m != name}


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the most specific prefix naming ``module``."""
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS.values()):
        for prefix in prefixes:
            names_it = module == prefix or (module.startswith(prefix + ".")
                                             and prefix != "kdtune")
            if names_it and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} has no layer: add it to LAYERS"
    return best[0]


@functools.cache
def graph() -> dict[str, set[str]]:
    trees = kdtune_modules()
    return {name: imports(name, tree, trees) for name, tree in trees.items()}


def upward(edges: Mapping[str, set[str]]) -> list[tuple[str, str]]:
    """Every ``(importer, imported)`` whose imported module sits in a higher layer."""
    return sorted((a, b) for a, targets in edges.items() for b in targets
                  if layer_of(b) > layer_of(a))


def circles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    for name in kdtune_modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer() -> None:
    names = list(LAYERS)
    found = [f"{a} ({names[layer_of(a)]}) imports {b} ({names[layer_of(b)]})"
             for a, b in upward(graph())]
    assert found == []


def test_no_circle() -> None:
    assert circles(graph()) == []


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    source = ("from kdtune.errors import KdtuneError\n"
              "def f():\n    from kdtune.tune import sweep\n    import kdtune.cli\n"
              "if True:\n    from . import registry\n")
    known = {"kdtune.errors", "kdtune.tune", "kdtune.tune.sweep", "kdtune.cli",
             "kdtune.methods", "kdtune.methods.registry", "kdtune.methods.x"}
    found = imports("kdtune.methods.x", ast.parse(source), known)
    assert found == {"kdtune.errors", "kdtune.tune.sweep", "kdtune.cli",
                     "kdtune.methods.registry"}
    assert upward({"kdtune.methods.x": found}) == [("kdtune.methods.x", "kdtune.cli"),
                                                   ("kdtune.methods.x", "kdtune.tune.sweep")]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
