"""The flags of ``kdtune train`` and ``kdtune teacher``, made from the config and the registries.

A :class:`~kdtune.config.TrainConfig` field whose metadata names a flag group (``data``,
``model``, ``distillation``, ``training``) becomes ``--field-name`` in that group, typed by
the field: a number parses as one, ``bool`` is a switch, ``bool | None`` a ``--x/--no-x`` pair,
``tuple[int, ...]`` a list flag (``--hidden 1200 1200``, ``--hidden 1200-1200``). Each method
parameter of the method registry becomes a flag too (:func:`add_method_flags`). Every flag
defaults to "not given", so that a ``--config`` file's value is not overridden by a flag the
user did not type.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from kdtune.config import TrainConfig


def _kind(hint: Any) -> tuple[Any, bool]:
    """``(the type, whether None is allowed)`` of a field's annotation."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None)), True
    return hint, False


#: The list flags (a negative first value needs ``--flag=-1,...``; see kdtune.cli).
LIST_FLAGS = tuple("--" + name.replace("_", "-")
                   for name, hint in typing.get_type_hints(TrainConfig).items()
                   if typing.get_origin(_kind(hint)[0]) is tuple)


class ListFlag(argparse.Action):
    """A list flag as a user types it: ``--hidden 1200 1200``, ``--hidden 1200-1200`` or
    ``--blocks 1,1,0,0`` (several words are joined with commas)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        words = [values] if isinstance(values, str) else list(values)
        setattr(namespace, self.dest, ",".join(words) if len(words) > 1 else words[0])


def add_config_flags(parser: argparse.ArgumentParser, group: str) -> Any:
    """Add the flags of the fields in flag group ``group`` to a new argument group of that
    title, in field order; returns the argument group."""
    hints = typing.get_type_hints(TrainConfig)
    g = parser.add_argument_group(group)
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("flag") != group:
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS}
        if f.metadata.get("help"):
            kwargs["help"] = f.metadata["help"]
        kind, optional = _kind(hints[f.name])
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if optional else "store_true"
        elif typing.get_origin(kind) is tuple:
            kwargs.update(nargs="+", action=ListFlag)
        elif kind in (int, float):
            kwargs["type"] = kind
        g.add_argument(flag, **kwargs)
    return g


def add_method_flags(group: Any, parser: argparse.ArgumentParser, *, methods: bool) -> None:
    """``--method`` and ``--feature-method`` in ``group``; with ``methods``, their help lists
    the registered methods and each method parameter (``--nckd-weight``) becomes a flag in an
    argument group of its own, generated from the method registry's metadata (no torch)."""
    S = argparse.SUPPRESS
    if not methods:
        group.add_argument("--method", default=S)
        group.add_argument("--feature-method", default=S)
        return
    from kdtune.methods import (
        all_params,
        feature_params,
        list_feature_methods,
        list_methods,
        methods_reading,
    )

    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    group.add_argument("--method", default=S,
                       help=f"the logit term, one of: {', '.join(list_methods())} "
                            f"(default {fields['method']})")
    group.add_argument("--feature-method", default=S,
                       help=f"the feature/relation term, one of: "
                            f"{', '.join(list_feature_methods())} "
                            f"(default {fields['feature_method']})")
    g = parser.add_argument_group("method parameters (each read by the methods it names)")
    for name, param in all_params().items():
        shown = ("default per feature method" if name in feature_params() else "required"
                 ) if param.required else f"default {param.default}"
        help_ = f"{', '.join(methods_reading(name))}: {param.help} ({param.allowed()}; {shown})"
        if param.type is bool:
            g.add_argument(param.flag, dest=name, action=argparse.BooleanOptionalAction,
                           default=S, help=help_)
        else:
            g.add_argument(param.flag, dest=name, type=param.type, default=S, help=help_,
                           metavar=param.type.__name__.upper())
