"""Student and teacher models, built by name from a registry.

>>> from kdtune.models import create_model, count_params
>>> model = create_model("mlp", 10, (1, 8, 8), hidden=[50])
>>> count_params(model)
3760

Add a model by decorating a builder ``f(num_classes, in_shape, **options) -> nn.Module`` with
``@register_model("name")`` in a module imported below, or in a package of its own whose
entry point in the group ``kdtune.models`` names that module; the tests pick it up
automatically.

Every model also has ``forward_features(x) -> Features(logits, stages, embedding)``: the
logits, the per-stage outputs and the pre-logit embedding of one forward pass (used by the
feature distillation methods). ``model(x)`` itself is the plain forward used for inference,
latency, FLOPs and export.
"""

from __future__ import annotations

from kdtune.models import mlp, resnet, wrn  # noqa: F401  (imported to register the models)
from kdtune.models.registry import (
    MODELS,
    Features,
    count_params,
    create_model,
    list_models,
    model_options,
    register_model,
    unregister_model,
)

#: The names of the ``kdtune.models`` entry points loaded (each registers its models).
PLUGINS = MODELS.load_plugins()

__all__ = ["MODELS", "PLUGINS", "Features", "count_params", "create_model", "list_models",
           "model_options", "register_model", "unregister_model"]
