"""Contrastive representation distillation (``crd``, Tian et al. 2020), as RepDistiller's
``CRDLoss``: stateful, so the trainer drives it (no pure :func:`feature_loss` term).

On the embeddings: linear heads (dim 128) map the student's and the teacher's embedding to
L2-normalised vectors ``v_s``, ``v_t``. Two memory banks over the training set (student and
teacher, ``(n, 128)``, initialised uniformly in ``±1/sqrt(128/3)``) hold one vector per sample.
For a batch, ``K = crd_negatives`` negatives are drawn per sample uniformly from the other
samples (capped at ``n − 1``); the positive is the sample's own bank row. Scores
``exp(<bank row, v> / crd_t) / Z``, with ``v_s`` scored against the teacher bank and ``v_t``
against the student bank; ``Z`` (one per side) is the mean score times ``n``, estimated on the
first batch and kept. NCE loss per side (noise probability ``1/n``)::

    −log(P_pos / (P_pos + K/n)) − Σ_neg log((K/n) / (P_neg + K/n)),   averaged over the batch

term = student side + teacher side. After the step the banks take the batch's vectors with
momentum 0.5 (``row = normalize(0.5 row + 0.5 v)``). The heads, the banks and ``Z`` are the
method's parts: trained with the student and saved in checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdtune.methods.features import FeatureTerm
from kdtune.methods.specs import FeatureSpec

DIM = 128
MOMENTUM = 0.5


class CRDTerm(FeatureTerm):
    """The CRD loss with its heads, memory banks and normalisation constants."""

    def __init__(self, spec: FeatureSpec, student_shapes: Sequence[torch.Size],
                 teacher_shapes: Sequence[torch.Size], params: Mapping[str, Any],
                 num_train: int) -> None:
        nn.Module.__init__(self)
        self.spec = spec
        self.params = {}
        self.pairs = [(0, 0)]
        self.adapters = nn.ModuleList()
        self.n = num_train
        self.k = min(int(params["crd_negatives"]), max(num_train - 1, 1))
        self.t = float(params["crd_t"])
        self.embed_s = nn.Linear(student_shapes[0][1], DIM)
        self.embed_t = nn.Linear(teacher_shapes[0][1], DIM)
        stdv = 1.0 / math.sqrt(DIM / 3)
        self.register_buffer("memory_s", torch.rand(num_train, DIM) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(num_train, DIM) * 2 * stdv - stdv)
        self.register_buffer("z", torch.full((2,), -1.0))  # -1: not estimated yet

    def negatives(self, idx: Tensor) -> Tensor:
        """``(B, K)`` indices of other samples, drawn from the stream of the global RNG."""
        draw = torch.randint(0, self.n - 1, (len(idx), self.k), device=idx.device)
        return draw + (draw >= idx[:, None]).long()  # skip the sample itself

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor],
                idx: Tensor) -> Tensor:
        v_s = nn.functional.normalize(self.embed_s(student[-1].flatten(1).float()), dim=1)
        v_t = nn.functional.normalize(self.embed_t(teacher[-1].detach().flatten(1).float()),
                                      dim=1)
        rows = torch.cat([idx[:, None], self.negatives(idx)], dim=1)  # positive first
        # v_s scored against the teacher bank, v_t against the student bank
        out_s = torch.exp(torch.bmm(self.memory_t[rows], v_s[:, :, None]).squeeze(2) / self.t)
        out_t = torch.exp(torch.bmm(self.memory_s[rows], v_t[:, :, None]).squeeze(2) / self.t)
        if self.z[0] < 0:
            with torch.no_grad():
                self.z.copy_(torch.stack([out_s.mean() * self.n, out_t.mean() * self.n]))
        loss = self.nce(out_s / self.z[0]) + self.nce(out_t / self.z[1])
        with torch.no_grad():  # the banks follow the batch with momentum
            for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                row = bank[idx] * MOMENTUM + v.detach() * (1 - MOMENTUM)
                bank[idx] = nn.functional.normalize(row, dim=1)
        return loss

    def nce(self, p: Tensor) -> Tensor:
        """NCE loss of scores ``(B, 1 + K)``, positive first, noise probability ``1/n``."""
        noise = self.k / self.n
        eps = 1e-7
        pos = torch.log(p[:, 0] / (p[:, 0] + noise + eps))
        neg = torch.log(noise / (p[:, 1:] + noise + eps)).sum(1)
        return -(pos + neg).mean()


def build_term(spec: FeatureSpec, student_shapes: Sequence[torch.Size],
               teacher_shapes: Sequence[torch.Size], params: Mapping[str, Any],
               num_train: int) -> FeatureTerm:
    """crd's ``build``: its stateful term (heads and memory banks for ``num_train`` samples)."""
    return CRDTerm(spec, student_shapes, teacher_shapes, params, num_train)


def crd(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Stateful: computed by :class:`CRDTerm` in training, never called directly."""
    raise NotImplementedError
