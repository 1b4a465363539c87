"""KD methods: a registry of pure per-sample loss functions.

    from kdtune.methods import distillation_loss, adjust_teacher_logits, list_methods
    loss = distillation_loss(method, student_logits, teacher_logits, labels, *,
                             alpha, temperature, t_right=None, t_wrong=None)  # batch mean
    z = adjust_teacher_logits(method, teacher_logits, labels)  # rkd_v1..rkd_v4; new tensor

One module per family registers its methods on import (the order below is the registration
order): ``vanilla`` (none, vanilla, spherical), ``relative`` (rkd_v1..rkd_v4),
``two_temperature``, ``earth_mover``. A new method is one decorated function; see
:mod:`kdtune.methods.registry`.
"""

from __future__ import annotations

from kdtune.methods.registry import (
    MethodSpec,
    adjust_teacher_logits,
    distillation_loss,
    get_method,
    list_methods,
    register_method,
)

# The families register their methods on import, so this order is list_methods()'s order.
# isort: off
from kdtune.methods import vanilla
from kdtune.methods import relative
from kdtune.methods import two_temperature
from kdtune.methods import earth_mover
# isort: on

__all__ = [
    "MethodSpec",
    "adjust_teacher_logits",
    "distillation_loss",
    "earth_mover",
    "get_method",
    "list_methods",
    "register_method",
    "relative",
    "two_temperature",
    "vanilla",
]
