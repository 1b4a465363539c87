"""KD methods: a registry of soft terms, each with its own hyper-parameters.

    from kdtune.methods import distillation_loss, list_methods, method_params
    loss = distillation_loss(method, student_logits, teacher_logits, labels, *,
                             alpha, temperature, **params)   # batch-mean scalar
    method_params("dkd")   # {"tckd_weight": Param(...), "nckd_weight": Param(...), ...}
    z = adjust_teacher_logits(method, teacher_logits, labels)  # rkd_v1..rkd_v4; new tensor

Importing this package imports no torch: the built-in methods are declared in
:mod:`kdtune.methods.catalog` (names, parameters, docs) and each family module's functions
are imported when first called: ``vanilla`` (none, vanilla, spherical), ``relative``
(rkd_v1..rkd_v4), ``two_temperature``, ``earth_mover``, ``dkd``, ``dist``, ``tf_kd``, ``dml``;
then the feature methods (:mod:`kdtune.methods.features`: ``fitnet``, ``at``, ``sp``,
``relational``, ``pkt``, ``crd``), the ``feature_method`` term of the objective ``alpha * CE +
(1 - alpha) * logit_term + feature_weight * feature_term``::

    loss = feature_loss(name, student_feats, teacher_feats, **params)  # lists -> scalar

The functions that compute (``training_loss``, ``distillation_loss``,
``adjust_teacher_logits`` from :mod:`kdtune.methods.registry`, ``feature_loss`` from
:mod:`kdtune.methods.features`) are attributes of this package too, imported with torch on
first use. Then every entry point of the group ``kdtune.methods`` is loaded: a package
outside kdtune registers its methods from the module its entry point names, with
:func:`register_method` / :func:`register_feature_method`.
"""

from __future__ import annotations

import importlib
from typing import Any

from kdtune.methods import catalog  # noqa: F401  (declares the built-in methods)
from kdtune.methods.params import KD_FIELDS, Param
from kdtune.methods.specs import (
    FEATURES,
    METHODS,
    FeatureSpec,
    MethodSpec,
    all_params,
    feature_method_params,
    feature_params,
    get_feature_method,
    get_method,
    list_feature_methods,
    list_methods,
    method_params,
    methods_reading,
    register_feature_method,
    register_method,
    unregister_feature_method,
    unregister_method,
)

#: The entry-point group a package registers its methods under.
ENTRY_POINT_GROUP = "kdtune.methods"

#: The functions that need torch: name -> the module that defines them.
_TORCH_FUNCTIONS = {"training_loss": "kdtune.methods.registry",
                    "distillation_loss": "kdtune.methods.registry",
                    "adjust_teacher_logits": "kdtune.methods.registry",
                    "feature_loss": "kdtune.methods.features"}


def __getattr__(name: str) -> Any:
    """The torch functions of :data:`_TORCH_FUNCTIONS`, imported on first use."""
    if name in _TORCH_FUNCTIONS:
        return getattr(importlib.import_module(_TORCH_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'kdtune.methods' has no attribute {name!r}")


def load_plugins() -> list[str]:
    """Import every ``kdtune.methods`` entry point (each registers its methods and feature
    methods on import). Returns the entry points' names; one that fails to load is a
    one-line :class:`~kdtune.errors.KdtuneError` naming it."""
    return METHODS.load_plugins()


PLUGINS = load_plugins()


def unused_keys(method: str, feature_method: str = "none") -> tuple[str, ...]:
    """The method-dependent config keys (``alpha``, ``temperature``, ``kd_warmup`` and every
    registered method parameter) that neither ``method`` nor ``feature_method`` reads: a
    run's resolved value of such a key changes nothing."""
    spec, fspec = get_method(method), get_feature_method(feature_method)

    def unused(key: str) -> bool:
        if key == "kd_warmup":  # ramps both terms
            return not spec.reads(key) and not fspec.reads(key)
        return not spec.reads(key) or not fspec.reads(key)

    return tuple(k for k in (*KD_FIELDS, *all_params()) if unused(k))


__all__ = [
    "ENTRY_POINT_GROUP",
    "FEATURES",
    "KD_FIELDS",
    "METHODS",
    "PLUGINS",
    "FeatureSpec",
    "MethodSpec",
    "Param",
    "adjust_teacher_logits",
    "all_params",
    "distillation_loss",
    "feature_loss",
    "feature_method_params",
    "feature_params",
    "get_feature_method",
    "get_method",
    "list_feature_methods",
    "list_methods",
    "load_plugins",
    "method_params",
    "methods_reading",
    "register_feature_method",
    "register_method",
    "training_loss",
    "unregister_feature_method",
    "unregister_method",
    "unused_keys",
]
