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


def fitnet(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Mean over pairs of the mean squared error between matched features."""
    terms = [nn.functional.mse_loss(s, t) for s, t in zip(student_feats, teacher_feats,
                                                           strict=True)]
    return torch.stack(terms).mean()
