"""Pareto dominance (:mod:`kdtune.pareto`): the front and the successive fronts, against the
definition applied point by point, on hand-made and generated point sets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kdtune.pareto import dominates, non_dominated_fronts, pareto_front

#: Point sets with few distinct values, so that ties and equal points are common.
POINTS = st.integers(1, 3).flatmap(
    lambda k: st.lists(st.lists(st.integers(0, 4), min_size=k, max_size=k), max_size=30))


def by_definition(points: list[list[int]]) -> list[int]:
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def test_fronts_of_a_hand_made_set() -> None:
    points = [(1, 5), (2, 3), (4, 1), (3, 4), (5, 5), (4, 4)]
    # (3, 4) is dominated by (2, 3) only; (4, 4) by (3, 4) too; (5, 5) by everything
    assert pareto_front(points) == [0, 1, 2]
    assert non_dominated_fronts(points) == [[0, 1, 2], [3], [5], [4]]
    assert non_dominated_fronts([(1, 1), (1, 1), (2, 2)]) == [[0, 1], [2]]  # equal: same front
    assert non_dominated_fronts([(2, 1), (1, 2)]) == [[0, 1]]
    assert non_dominated_fronts([(3,), (1,), (2,), (1,)]) == [[1, 3], [2], [0]]
    assert pareto_front([]) == [] and non_dominated_fronts([]) == []


def test_dominance_needs_one_strictly_better_objective() -> None:
    assert dominates((1, 2), (1, 3)) and not dominates((1, 3), (1, 2))
    assert not dominates((1, 2), (1, 2))  # equal points
    assert not dominates((1, 3), (2, 1))  # each better on one


@given(POINTS)
def test_the_front_is_the_points_nothing_dominates(points: list[list[int]]) -> None:
    assert pareto_front(points) == by_definition(points)


@given(POINTS)
def test_each_front_is_the_front_of_what_the_earlier_ones_leave(points: list[list[int]]
                                                                 ) -> None:
    fronts = non_dominated_fronts(points)
    assert sorted(i for f in fronts for i in f) == list(range(len(points)))
    left = list(range(len(points)))
    for front in fronts:
        assert front == [left[k] for k in by_definition([points[i] for i in left])]
        left = [i for i in left if i not in front]
