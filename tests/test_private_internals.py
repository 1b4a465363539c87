"""kdtune uses no private names of the libraries it builds on (Ray, Optuna, MLflow, ...).

Every ``.py`` file under ``kdtune/`` is parsed with :mod:`ast`. A name with one leading
underscore (``_name``, not a dunder) is kdtune's own when kdtune's source defines it: a
``def``, a ``class``, an assignment target, a function parameter, or an attribute assigned on
``self``/``cls``. Any other is a library's private name, and these forms of using one fail,
each listed as ``file:line``:

* an attribute access ``x._name``;
* ``getattr``/``setattr``/``hasattr``/``delattr`` with the string literal ``"_name"``;
* a keyword argument ``_name=`` in a call, unless a kdtune function has that parameter;
* an import of a module path with a ``_``-prefixed component from ray, optuna or mlflow
  (``import ray._private.utils``, ``from optuna.storages._cached_storage import X``), or of
  a ``_``-prefixed name from them (``from ray.tune.x import _foo``);
* a string literal naming such a module (``"ray._private..."``, as ``importlib`` or
  ``mock.patch`` would take it).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import kdtune

KDTUNE = Path(kdtune.__file__).parent
LIBRARIES = ("ray", "optuna", "mlflow")
ATTRIBUTE_BUILTINS = ("getattr", "setattr", "hasattr", "delattr")
#: A dotted module path of one of LIBRARIES with a ``_``-prefixed component.
PRIVATE_MODULE = re.compile(rf"^(?:{'|'.join(LIBRARIES)})(?:\.\w+)*\._\w*")


def is_private(name: str) -> bool:
    """``_name`` or ``__name`` (mangled); not a dunder, not ``_`` alone."""
    return name.startswith("_") and name.strip("_") != "" and not (
        name.startswith("__") and name.endswith("__"))


def definitions(trees: Iterable[ast.AST]) -> tuple[set[str], set[str]]:
    """(every name the code defines, the names of its functions' parameters)."""
    names: set[str] = set()
    params: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.arguments):
                args = [*node.posonlyargs, *node.args, *node.kwonlyargs, node.vararg,
                        node.kwarg]
                params.update(a.arg for a in args if a is not None)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
    return names | params, params


def private_uses(sources: Mapping[str, str]) -> list[str]:
    """``file:line: what`` for every use of a private name that ``sources`` (file name ->
    Python source) do not define themselves."""
    trees = {name: ast.parse(text, filename=name) for name, text in sources.items()}
    defined, params = definitions(trees.values())
    found: list[str] = []
    for filename, tree in trees.items():
        for node in ast.walk(tree):
            for what in _offences(node, defined, params):
                found.append(f"{filename}:{node.lineno}: {what}")
    return sorted(set(found), key=_file_line)


def _offences(node: ast.AST, defined: set[str], params: set[str]) -> Iterable[str]:
    def foreign(name: str) -> bool:
        return is_private(name) and name not in defined

    if isinstance(node, ast.Attribute) and foreign(node.attr):
        yield f"attribute .{node.attr}"
    elif isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in ATTRIBUTE_BUILTINS and \
                len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and \
                isinstance(node.args[1].value, str) and foreign(node.args[1].value):
            yield f"{func.id}(..., {node.args[1].value!r})"
        for keyword in node.keywords:
            if keyword.arg is not None and is_private(keyword.arg) and \
                    keyword.arg not in params:
                yield f"keyword argument {keyword.arg}="
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if _private_module(alias.name):
                yield f"import {alias.name}"
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if _private_module(node.module):
            yield f"from {node.module} import ..."
        elif node.module.split(".")[0] in LIBRARIES:
            for alias in node.names:
                if is_private(alias.name):
                    yield f"from {node.module} import {alias.name}"
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
            PRIVATE_MODULE.match(node.value):
        yield f"string {node.value[:60]!r}"


def _private_module(path: str) -> bool:
    parts = path.split(".")
    return parts[0] in LIBRARIES and any(is_private(p) for p in parts[1:])


def _file_line(entry: str) -> tuple[str, int]:
    filename, line, _ = entry.split(":", 2)
    return filename, int(line)


def kdtune_sources() -> dict[str, str]:
    files = sorted(KDTUNE.rglob("*.py"))
    assert len(files) > 20, files  # the package, not an empty folder
    return {str(f.relative_to(KDTUNE.parent)): f.read_text(encoding="utf-8") for f in files}


# -- the checker finds every form ----------------------------------------------------------
FORBIDDEN = '''\
import ray
import ray._private.utils
import optuna.storages._cached_storage as cached
from optuna.storages._cached_storage import _CachedStorage
from ray.tune.search import _foo
from mlflow._internal import thing
study._storage.get_all_studies()
getattr(study, "_study_id")
setattr(trial, "_hidden", 1)
hasattr(ray, "_private")
delattr(trial, "_gone")
make(_internal_flag=True)
importlib.import_module("ray._private.worker")
mock.patch("optuna.storages._rdb.models.TrialModel")
trial.__mangled
'''
FORBIDDEN_LINES = {
    "2": "import ray._private.utils",
    "3": "import optuna.storages._cached_storage",
    "4": "from optuna.storages._cached_storage import ...",
    "5": "from ray.tune.search import _foo",
    "6": "from mlflow._internal import ...",
    "7": "attribute ._storage",
    "8": "getattr(..., '_study_id')",
    "9": "setattr(..., '_hidden')",
    "10": "hasattr(..., '_private')",
    "11": "delattr(..., '_gone')",
    "12": "keyword argument _internal_flag=",
    "13": "string 'ray._private.worker'",
    "14": "string 'optuna.storages._rdb.models.TrialModel'",
    "15": "attribute .__mangled",
}
ALLOWED = '''\
import optuna.storages
from ray.tune.search import Searcher
from ._local import _helper
from kdtune.config import _coerce


class Mine:
    _cache: dict = {}

    def __init__(self, _seed=0):
        self._state = 1
        self.__dict__.update({})

    def run(self):
        getattr(self, "_state")
        hasattr(self, "_cache")
        return self._state, self._cache, type(self).__name__


def _private_helper(*, _depth=1):
    return _private_helper(_depth=_depth + 1)


_MODULE_CONSTANT = 3
other._MODULE_CONSTANT
x = "ray.tune is public; optuna._x in a sentence is not a module path"
_helper(), _coerce()
'''


def test_the_checker_finds_each_forbidden_form() -> None:
    found = private_uses({"snippet.py": FORBIDDEN})
    lines = {entry.split(":")[1]: entry for entry in found}
    assert set(lines) == set(FORBIDDEN_LINES), found
    for line, what in FORBIDDEN_LINES.items():
        assert what in lines[line], (line, lines[line])
    assert private_uses({"snippet.py": "import ray\n"}) == []


def test_the_checker_allows_what_the_code_defines() -> None:
    assert private_uses({"snippet.py": ALLOWED}) == []
    # a private name is kdtune's own when any of its files defines it
    uses = "from helpers import thing\nthing._shared()\nrun(_verbose=True)\n"
    assert private_uses({"a.py": uses}) == ["a.py:2: attribute ._shared",
                                            "a.py:3: keyword argument _verbose="]
    defines = "def _shared():\n    pass\n\ndef run(_verbose=False):\n    pass\n"
    assert private_uses({"a.py": uses, "b.py": defines}) == []


def test_kdtune_uses_no_private_name_of_a_library() -> None:
    found = private_uses(kdtune_sources())
    assert not found, "private names of libraries used in kdtune:\n" + "\n".join(found)
