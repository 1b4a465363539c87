"""Pareto dominance, the one computation of it in kdtune: the non-dominated points of a set
(the best trials of a multi-objective sweep, the front drawn in the report) and the
successive fronts of non-dominated sorting (MO-ASHA's ranking at a rung).

Points are sequences of numbers, every objective to be minimised (negate a maximised one).
A point dominates another when it is no worse on every objective and better on one; equal
points do not dominate each other, so they share a front.
"""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a`` is no larger than ``b`` on every objective and smaller on one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and \
        any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates, in ascending order.

    The points are visited in lexicographic order, in which no point comes before one that
    dominates it, and each is compared with the front found so far only: a point dominated
    by anything is dominated by a point of the front."""
    order = sorted(range(len(points)), key=lambda i: tuple(points[i]))
    front: list[int] = []
    for i in order:
        if not any(dominates(points[j], points[i]) for j in front):
            front.append(i)
    return sorted(front)


def non_dominated_fronts(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """Indices of ``points`` by front, each in ascending order: the first holds those no
    point dominates, the next those only the first dominates, and so on."""
    left = list(range(len(points)))
    fronts = []
    while left:
        front = [left[k] for k in pareto_front([points[i] for i in left])]
        fronts.append(front)
        taken = set(front)
        left = [i for i in left if i not in taken]
    return fronts
