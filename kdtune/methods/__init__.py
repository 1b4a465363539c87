"""KD methods: a registry of soft terms, each with its own hyper-parameters.

    from kdtune.methods import distillation_loss, list_methods, method_params
    loss = distillation_loss(method, student_logits, teacher_logits, labels, *,
                             alpha, temperature, **params)   # batch-mean scalar
    method_params("dkd")   # {"tckd_weight": Param(...), "nckd_weight": Param(...), ...}
    z = adjust_teacher_logits(method, teacher_logits, labels)  # rkd_v1..rkd_v4; new tensor

One module per family registers its methods on import (the order below is the registration
order): ``vanilla`` (none, vanilla, spherical), ``relative`` (rkd_v1..rkd_v4),
``two_temperature``, ``earth_mover``, ``dkd``, ``dist``, ``tf_kd``; then the feature methods
(:mod:`kdtune.methods.features`: ``fitnet``, ``at``, ``sp``, ``relational``, ``pkt``), the
``feature_method`` term of the objective ``alpha * CE + (1 - alpha) * logit_term +
feature_weight * feature_term``::

    loss = feature_loss(name, student_feats, teacher_feats, **params)  # lists -> scalar
 Then every entry point of
the group ``kdtune.methods`` is loaded: a package outside kdtune registers its methods the same
way from the module its entry point names. A new method is one decorated function; see
:mod:`kdtune.methods.registry`.
"""

from __future__ import annotations

from kdtune.methods.registry import (
    METHODS,
    MethodSpec,
    Param,
    adjust_teacher_logits,
    all_params,
    distillation_loss,
    get_method,
    list_methods,
    method_params,
    methods_reading,
    register_method,
    training_loss,
    unregister_method,
)

# The families register their methods on import, so this order is list_methods()'s order.
# isort: off
from kdtune.methods import vanilla
from kdtune.methods import relative
from kdtune.methods import two_temperature
from kdtune.methods import earth_mover
from kdtune.methods import dkd
from kdtune.methods import dist
from kdtune.methods import tf_kd
from kdtune.methods import dml
from kdtune.methods import features
from kdtune.methods import fitnet
from kdtune.methods import at
from kdtune.methods import sp
from kdtune.methods import relational
from kdtune.methods import pkt
from kdtune.methods import crd
# isort: on
from kdtune.methods.features import (
    FeatureSpec,
    feature_loss,
    feature_method_params,
    get_feature_method,
    list_feature_methods,
    register_feature_method,
    unregister_feature_method,
)

#: The entry-point group a package registers its methods under.
ENTRY_POINT_GROUP = "kdtune.methods"


def load_plugins() -> list[str]:
    """Import every ``kdtune.methods`` entry point (each registers its methods and feature
    methods on import). Returns the entry points' names; one that fails to load is a
    one-line :class:`KdtuneError` naming it."""
    return METHODS.load_plugins()


PLUGINS = load_plugins()


def unused_keys(method: str, feature_method: str = "none") -> tuple[str, ...]:
    """The method-dependent config keys (``alpha``, ``temperature``, ``kd_warmup`` and every
    registered method parameter) that neither ``method`` nor ``feature_method`` reads: a
    run's resolved value of such a key changes nothing."""
    from kdtune.methods.registry import KD_FIELDS

    spec, fspec = get_method(method), get_feature_method(feature_method)

    def unused(key: str) -> bool:
        if key == "kd_warmup":  # ramps both terms
            return not spec.reads(key) and not fspec.reads(key)
        return not spec.reads(key) or not fspec.reads(key)

    return tuple(k for k in (*KD_FIELDS, *all_params()) if unused(k))

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGINS",
    "FeatureSpec",
    "MethodSpec",
    "Param",
    "adjust_teacher_logits",
    "all_params",
    "at",
    "crd",
    "dist",
    "distillation_loss",
    "dkd",
    "dml",
    "earth_mover",
    "feature_loss",
    "feature_method_params",
    "features",
    "fitnet",
    "get_feature_method",
    "get_method",
    "list_feature_methods",
    "list_methods",
    "load_plugins",
    "method_params",
    "methods_reading",
    "pkt",
    "register_feature_method",
    "register_method",
    "relational",
    "relative",
    "sp",
    "tf_kd",
    "training_loss",
    "two_temperature",
    "unregister_feature_method",
    "unregister_method",
    "unused_keys",
    "vanilla",
]
