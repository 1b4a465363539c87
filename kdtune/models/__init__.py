"""Student and teacher models, built by name from a registry.

>>> from kdtune.models import create_model, count_params
>>> model = create_model("mlp", 10, (1, 8, 8), hidden=[50])
>>> count_params(model)
3760

Add a model by decorating a builder ``f(num_classes, in_shape, **options) -> nn.Module`` with
``@register_model("name")`` in a module imported below; the tests pick it up automatically.
"""

from __future__ import annotations

from kdtune.models import mlp, resnet, wrn  # noqa: F401  (imported to register the models)
from kdtune.models.registry import (
    count_params,
    create_model,
    list_models,
    model_options,
    register_model,
)

__all__ = ["count_params", "create_model", "list_models", "model_options", "register_model"]
