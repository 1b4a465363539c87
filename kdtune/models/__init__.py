"""Student and teacher models, built by name from a registry.

>>> from kdtune.models import create_model, count_params
>>> model = create_model("mlp", 10, (1, 8, 8), hidden=[50])
>>> count_params(model)
3760

Importing this package imports no torch: the registry (:mod:`kdtune.models.catalog`) knows
each model's name and options; ``create_model``, ``count_params`` and :class:`Features`
(:mod:`kdtune.models.registry`) are attributes of this package too, imported with torch on
first use. Add a model by decorating a builder ``f(num_classes, in_shape, **options) ->
nn.Module`` with ``@register_model("name")``, in a package of its own whose entry point in
the group ``kdtune.models`` names that module; the tests pick it up automatically.

Every model also has ``forward_features(x) -> Features(logits, stages, embedding)``: the
logits, the per-stage outputs and the pre-logit embedding of one forward pass (used by the
feature distillation methods). ``model(x)`` itself is the plain forward used for inference,
latency, FLOPs and export.
"""

from __future__ import annotations

import importlib
from typing import Any

from kdtune.models.catalog import (
    MODELS,
    ModelSpec,
    list_models,
    model_options,
    register_model,
    unregister_model,
)

#: The names that need torch, defined in kdtune.models.registry.
_TORCH_NAMES = ("Features", "count_params", "create_model")


def __getattr__(name: str) -> Any:
    """The names of :data:`_TORCH_NAMES`, imported on first use."""
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module("kdtune.models.registry"), name)
    raise AttributeError(f"module 'kdtune.models' has no attribute {name!r}")


#: The names of the ``kdtune.models`` entry points loaded (each registers its models).
PLUGINS = MODELS.load_plugins()

__all__ = ["MODELS", "PLUGINS", "Features", "ModelSpec", "count_params", "create_model",
           "list_models", "model_options", "register_model", "unregister_model"]
