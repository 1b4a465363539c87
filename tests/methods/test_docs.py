"""docs/methods.md's methods tables are the registry's: names, formulas, papers, parameters,
defaults."""

from __future__ import annotations

from pathlib import Path

from kdtune.methods import list_methods, method_params
from kdtune.methods.docs import (
    FEATURE_BEGIN,
    FEATURE_END,
    feature_methods_table,
    methods_table,
    table_in,
)

PAGE = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


def test_methods_table_is_generated_from_the_registry() -> None:
    written = table_in(PAGE.read_text())
    assert written == methods_table(), (
        "docs/methods.md's methods table is out of date: run `python -m kdtune.methods.docs "
        "docs/methods.md`")


def test_feature_methods_table_is_generated_from_the_registry() -> None:
    written = table_in(PAGE.read_text(), FEATURE_BEGIN, FEATURE_END)
    assert written == feature_methods_table(), (
        "docs/methods.md's feature methods table is out of date: run `python -m "
        "kdtune.methods.docs docs/methods.md`")


def test_the_table_names_every_method_and_its_defaults() -> None:
    rows = [line.split(" | ") for line in table_in(PAGE.read_text()).splitlines()[2:]]
    assert [r[0].strip("| `") for r in rows] == list_methods()
    for row, method in zip(rows, list_methods(), strict=True):
        for name, p in method_params(method).items():
            shown = "required" if p.required else (
                f"default `{str(p.default).lower() if p.type is bool else p.default}`")
            assert f"`{name}` ({shown}; {p.allowed()})" in row[4]
