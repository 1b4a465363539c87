"""kdtune.registry: the one registry idiom that models, methods, feature methods and datasets
share (each registry's own entries are tested by its contract suite)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdtune.errors import KdtuneError
from kdtune.registry import Registry


def test_add_get_names_remove() -> None:
    things: Registry[int] = Registry("thing")
    things.add("beta", 2)
    things.add("alpha", 1)
    assert things.names() == ["beta", "alpha"] and list(things) == ["beta", "alpha"]
    assert Registry("thing", sort=True).names() == []
    assert things.get("alpha") == 1 and "alpha" in things and len(things) == 2
    assert [] not in things  # an unhashable name is simply not registered
    with pytest.raises(ValueError, match="thing 'alpha' is already registered"):
        things.add("alpha", 3)
    with pytest.raises(KdtuneError) as info:
        things.get("alpah")
    assert str(info.value) == ("unknown thing 'alpah'; choose one of: beta, alpha "
                               "(did you mean 'alpha'?)")
    assert things.remove("beta") == 2 and things.items() == [("alpha", 1)]
    with pytest.raises(KdtuneError, match="unknown thing 'beta'"):
        things.remove("beta")


def _plugin(folder: Path, module: str, source: str, group: str) -> None:
    """An installed-looking package (module + ``*.dist-info``) on ``sys.path``."""
    (folder / f"{module}.py").write_text(source)
    info = folder / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{module} = {module}\n")


def test_entry_point_plugins_register_on_load(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    things: Registry[int] = Registry("thing", plugins="kdtune_test.things")
    monkeypatch.setattr(sys.modules[__name__], "THINGS", things, raising=False)
    _plugin(tmp_path, "kdtune_test_good", f"import {__name__} as t\nt.THINGS.add('seven', 7)\n",
            "kdtune_test.things")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert things.load_plugins() == ["kdtune_test_good"] and things.get("seven") == 7
    assert Registry("thing").load_plugins() == []  # no group: no plugins

    broken: Registry[int] = Registry("widget", plugins="kdtune_test.widgets")
    _plugin(tmp_path, "kdtune_test_bad", "raise RuntimeError('no\\nGPU')\n", "kdtune_test.widgets")
    with pytest.raises(KdtuneError) as info:
        broken.load_plugins()
    assert str(info.value) == ("widget plugin 'kdtune_test_bad' (kdtune_test_bad) failed to "
                               "load: RuntimeError: no GPU")
