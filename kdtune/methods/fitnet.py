"""FitNets (``fitnet``, Romero et al. 2015): the student's hint layer regresses the teacher's.

Term: the mean over stage pairs of ``mse(adapter(f_s), f_t)`` (mean over all elements). The
adapter belongs to the method: a 1x1 convolution + BN for maps, a linear layer for vectors,
when the shapes differ (the identity otherwise); it is trained with the student. Maps of
different spatial sizes are average-pooled to the smaller one. Default hint: the last stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdtune.methods.features import FEATURE_WEIGHT, STAGES, register_feature_method


@register_feature_method(
    "fitnet", inputs="stages", params=[FEATURE_WEIGHT, STAGES],
    defaults={"feature_weight": 100.0, "stages": "last"}, adapt=True,
    formula="mean over pairs of `mse(adapter(f_s), f_t)`; adapter: 1×1 conv + BN (maps) or "
            "linear (vectors) when shapes differ",
    paper="Romero et al. 2015 (FitNets)")
def fitnet(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Mean over pairs of the mean squared error between matched features."""
    terms = [nn.functional.mse_loss(s, t) for s, t in zip(student_feats, teacher_feats,
                                                           strict=True)]
    return torch.stack(terms).mean()
