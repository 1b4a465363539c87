"""The per-view teacher table computed in parallel over a sweep's Ray cluster.

A table is ``N samples x V views`` teacher forward passes (162 views for CIFAR: ~8M images
for CIFAR-10), so on a cluster the driver does not compute it alone: the views are split into
contiguous groups, one Ray task per group computes :func:`kdtune.teacher.view_block` for all
samples (on a GPU when the sweep's trials use GPUs), and the driver joins the blocks. The
numbers are those of a single pass (same sample chunks, one view at a time).
"""

from __future__ import annotations

from typing import Any

import torch

from kdtune.data import Augmentation, DataSplits
from kdtune.teacher import Teacher, view_block, view_logits


def plan_shards(num_views: int, cpus_per_task: float, gpus: float) -> int:
    """How many tasks to spread a table over; 1 means the driver computes it itself.

    With GPUs: one task per GPU of the cluster (a GPU beats the driver's CPU even alone).
    CPU only: one task per trial slot (``cpus_per_task`` CPUs each), but only when the
    cluster has more than one node -- on one machine the driver's own threads use the same
    cores without starting workers.
    """
    import ray

    if not ray.is_initialized():
        return 1
    resources = ray.cluster_resources()
    if gpus > 0:
        slots = int(resources.get("GPU", 0))
    elif sum(1 for n in ray.nodes() if n.get("Alive")) > 1:
        slots = int(resources.get("CPU", 1) // max(1.0, cpus_per_task))
    else:
        slots = 1
    return max(1, min(slots, num_views))


def distributed_view_logits(teacher: Teacher, data: DataSplits, augment: Augmentation, *,
                            shards: int, cpus_per_task: float = 1, gpus: float = 0,
                            batch_size: int = 1024) -> torch.Tensor:
    """:func:`kdtune.teacher.view_logits`, its computation spread over ``shards`` Ray tasks.

    Cached like the local one (memory on the teacher, disk by fingerprint): a table already
    computed is not computed again.
    """
    def compute() -> torch.Tensor:
        import ray

        model_ref = ray.put(teacher.model.cpu())
        x_ref = ray.put(data.x_train)
        task = ray.remote(_block).options(num_cpus=cpus_per_task, num_gpus=1 if gpus else 0)
        groups = [g.tolist() for g in torch.arange(augment.num_views).tensor_split(shards)]
        refs = [task.remote(model_ref, x_ref, augment, g, batch_size,
                            "cuda" if gpus else "cpu", max(1, int(cpus_per_task)))
                for g in groups if g]
        return torch.cat(ray.get(refs), dim=1)

    return view_logits(teacher, data, augment, compute=compute, batch_size=batch_size)


def _block(model: Any, x: torch.Tensor, augment: Augmentation, views: list[int],
           batch_size: int, device: str, threads: int) -> torch.Tensor:
    """One task: the block of ``views`` for every sample (runs in a Ray worker)."""
    torch.set_num_threads(threads)
    return view_block(model.to(device).eval(), x, augment, views, batch_size=batch_size)
