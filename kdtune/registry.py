"""The one registry idiom: named entries of one kind (model, method, feature method, dataset).

Each kind keeps one :class:`Registry`: ``add`` an entry under a new name, ``names`` in
registration order (or sorted), ``get`` one by name (an unknown name is a one-line
:class:`~kdtune.errors.KdtuneError` listing the choices, with "did you mean"), ``remove`` one
(for tests), and ``load_plugins``: import every entry point of the kind's group (a package
outside kdtune registers its entries from the module its entry point names). An entry's
function may be a :class:`Ref` ``"module:name"``, imported when first called, so that what a
registry knows about its entries (names, parameters, docs) needs no heavy import. This module
imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from kdtune.errors import KdtuneError, choose_one

T = TypeVar("T")


class Registry(Generic[T]):
    """The entries of one ``kind`` by name; ``plugins``: its entry-point group, if any."""

    def __init__(self, kind: str, *, plugins: str | None = None, sort: bool = False) -> None:
        self.kind = kind
        self.plugins = plugins
        self.sort = sort
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name already taken is a ``ValueError``."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        """Unregister ``name`` (for tests) and return its entry."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def names(self) -> list[str]:
        """The registered names, in registration order (sorted when ``sort``)."""
        return sorted(self._entries) if self.sort else list(self._entries)

    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name raises :class:`KdtuneError`."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise choose_one(self.kind, name, self.names()) from None

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def values(self) -> list[T]:
        return [self._entries[name] for name in self.names()]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def load_plugins(self) -> list[str]:
        """Import every entry point of the group ``plugins`` (each registers its entries on
        import). Returns their names; one that fails to load is a one-line
        :class:`KdtuneError` naming it."""
        if self.plugins is None:
            return []
        names = []
        for ep in entry_points(group=self.plugins):
            try:
                ep.load()
            except Exception as exc:  # any failure in foreign code: name the plugin, one line
                detail = " ".join(str(exc).split()) or type(exc).__name__
                raise KdtuneError(f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to "
                                  f"load: {type(exc).__name__}: {detail}") from None
            names.append(ep.name)
        return names


class Ref:
    """A function named ``"module:name"``, imported when first called (or :meth:`load`-ed)."""

    def __init__(self, target: str) -> None:
        module, _, name = target.partition(":")
        if not module or not name:
            raise ValueError(f"{target!r}: expected 'module:name'")
        self.target = target
        self._loaded: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        if self._loaded is None:
            module, _, name = self.target.partition(":")
            self._loaded = getattr(importlib.import_module(module), name)
        return self._loaded

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Ref({self.target!r})"


def loaded(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """The function itself of ``fn`` (a :class:`Ref` is imported)."""
    return fn.load() if isinstance(fn, Ref) else fn
