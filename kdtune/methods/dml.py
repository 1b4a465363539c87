"""Deep mutual learning (``dml``, Zhang et al. 2018): online distillation, no teacher.

``dml_peers`` students of the trial's architecture train together in one simultaneous step
(the student is peer 0; the others are the method's parts: trained by the same optimiser and
schedule, saved in checkpoints, not part of the student). Peer ``k``'s loss::

    alpha * CE(z_k, y) + (1 - alpha) * mean_{j != k} KL_T(softmax(z_j / T).detach(), z_k)

and the step minimises their sum. The registered soft term is the one-peer form
``KL_T(softmax(z_j / T), z_k)`` with ``z_j`` passed as the target logits. ``val_accuracy`` is
peer 0's; ``best_peer_val_accuracy`` (an extra metric) the best peer's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kdtune.methods.vanilla import kl_t, soft_targets
from kdtune.metrics import evaluate


class Peers(nn.Module):
    """The other ``dml_peers - 1`` students and the step's loss over all peers."""

    def __init__(self, make_student: Callable[[], nn.Module], count: int) -> None:
        super().__init__()
        self.peers = nn.ModuleList(make_student() for _ in range(count))

    def forward(self, x: Tensor, student_logits: Tensor,
                loss: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        logits = [student_logits, *(peer(x).float() for peer in self.peers)]
        total = torch.zeros((), device=student_logits.device)
        for k, z_k in enumerate(logits):
            others = [loss(z_k, z_j.detach()) for j, z_j in enumerate(logits) if j != k]
            total = total + torch.stack(others).mean()
        return total

    @torch.no_grad()
    def metrics(self, x_val: Tensor, y_val: Tensor, student_accuracy: float
                ) -> dict[str, float]:
        accs = [student_accuracy, *(evaluate(p, x_val, y_val)[0] for p in self.peers)]
        return {"best_peer_val_accuracy": max(accs)}


def make_peers(make_student: Callable[[], nn.Module], params: Mapping[str, Any]) -> nn.Module:
    """dml's ``peers``: the ``dml_peers - 1`` other students, trained with the student."""
    return Peers(make_student, int(params["dml_peers"]) - 1)


def dml(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, temperature: float,
        dml_peers: int) -> Tensor:
    """The one-peer soft term ``KL_T(softmax(z_j / T), z_k)`` (``z_j`` as target logits)."""
    return kl_t(soft_targets(teacher_logits, temperature), student_logits, temperature)
