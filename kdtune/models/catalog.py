"""The model registry, without torch: each model's name and keyword options with defaults.

A :class:`ModelSpec` holds a model's options and its builder ``builder(num_classes, in_shape,
**options) -> nn.Module`` (the function itself, or a :class:`~kdtune.registry.Ref`
``"module:name"`` imported when first called). The built-in models are declared here with
refs to :mod:`kdtune.models.mlp`, :mod:`kdtune.models.resnet` and :mod:`kdtune.models.wrn`
(the contract tests check each builder takes exactly the options declared); a package outside
kdtune registers its own with :func:`register_model` from the module its entry point in the
group ``kdtune.models`` names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kdtune.registry import Ref, Registry

__all__ = ["MODELS", "ModelSpec", "builder_options", "list_models", "model_options",
           "register_model", "unregister_model"]

_POSITIONAL = ("num_classes", "in_shape")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder and its keyword options with their defaults."""

    name: str
    build: Callable[..., Any]
    options: Mapping[str, Any]


#: The registered models (listed sorted by name); plugins: the group ``kdtune.models``.
MODELS: Registry[ModelSpec] = Registry("model", plugins="kdtune.models", sort=True)


def builder_options(name: str, builder: Callable[..., Any]) -> dict[str, Any]:
    """The keyword options (with defaults) of ``builder``, which must start with
    ``(num_classes, in_shape)`` (else ``TypeError``)."""
    params = list(inspect.signature(builder).parameters.values())
    if tuple(p.name for p in params[:2]) != _POSITIONAL:
        raise TypeError(f"model builder {name!r} must start with (num_classes, in_shape)")
    return {p.name: p.default for p in params[2:]}


def register_model(name: str, *, options: Mapping[str, Any] | None = None
                   ) -> Callable[[Any], Any]:
    """Register ``builder(num_classes, in_shape, **options) -> nn.Module`` under ``name``.

    A function's options are its keyword parameters; a ``"module:name"`` builder declares
    them in ``options``."""

    def decorate(builder: Any) -> Any:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        if isinstance(builder, str):
            if options is None:
                raise TypeError(f"model {name!r}: a builder named by a string declares its "
                                "options")
            spec = ModelSpec(name, Ref(builder), dict(options))
        else:
            spec = ModelSpec(name, builder, builder_options(name, builder))
        MODELS.add(name, spec)
        return builder

    return decorate


def unregister_model(name: str) -> None:
    """Remove the model ``name`` (for tests)."""
    MODELS.remove(name)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


def model_options(name: str) -> dict[str, Any]:
    """The keyword options of model ``name`` with their defaults."""
    return dict(MODELS.get(name).options)


# -- the built-in models ----------------------------------------------------------------------
register_model("mlp", options={"hidden": (300,), "dropout": 0.0})("kdtune.models.mlp:mlp")
register_model("resnet", options={"blocks": (2, 2, 2, 2), "block": "basic", "width": 64,
                                  "stem_stride": 1})("kdtune.models.resnet:resnet")
for _name, _width in (("resnet18", 64), ("resnet34", 64), ("resnet50", 64), ("resnet152", 64),
                      ("resnet8", 16), ("resnet20", 16), ("resnet56", 16)):
    register_model(_name, options={"width": _width, "stem_stride": 1},
                   )(f"kdtune.models.resnet:{_name}")
register_model("wrn", options={"depth": 16, "widen_factor": 1, "dropout": 0.0},
               )("kdtune.models.wrn:wrn")
for _name in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"):
    register_model(_name, options={"dropout": 0.0})(f"kdtune.models.wrn:{_name}")
