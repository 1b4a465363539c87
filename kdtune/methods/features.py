"""Feature methods in training: the pure terms' entry point, stage pairing and the term module.

A trial's loss is::

    alpha * CE + (1 - alpha) * logit_term + feature_weight * feature_term

``method`` picks the logit term (:mod:`kdtune.methods.registry`); ``feature_method`` (default
``none``: no feature term) picks the feature term. A feature method registers its pure term
with the parameters it reads (:mod:`kdtune.methods.specs`; the built-in ones are declared in
:mod:`kdtune.methods.catalog`), exactly like a logit method::

    @register_feature_method("sp", inputs="stages", defaults={"feature_weight": 3000,
                             "stages": "last"}, params=[FEATURE_WEIGHT, STAGES], ...)
    def sp(student_feats, teacher_feats) -> Tensor: ...   # lists of tensors -> scalar

``inputs`` says what the term reads: ``"stages"`` (the models' per-stage outputs, paired from
the last stage backwards) or ``"embedding"`` (the pre-logit vectors, as one-element lists).
``feature_weight`` and ``stages`` are shared parameters whose default each method declares in
``defaults``. The pure terms are public::

    from kdtune.methods import feature_loss
    loss = feature_loss(name, student_feats, teacher_feats, **params)   # lists -> scalar

In training, :meth:`FeatureSpec.make_term` builds the :class:`FeatureTerm` module the trainer
calls: it selects the stage pairs, owns the method's trainable parts (fitnet's adapters) and
computes the term. A stateful method (crd) passes its own ``build`` and has no pure term.
The trainer never reads a method's name: it asks the spec what it needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdtune.errors import KdtuneError
from kdtune.methods.specs import (  # noqa: F401  (the spec side, re-exported)
    FEATURES,
    INPUTS,
    FeatureSpec,
    feature_method_params,
    get_feature_method,
    list_feature_methods,
    parse_stages,
    register_feature_method,
    unregister_feature_method,
)


def feature_loss(name: str, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor],
                 **params: Any) -> Tensor:
    """The pure term of feature method ``name`` on matched lists: a float32 scalar.

    ``student_feats[i]`` pairs with ``teacher_feats[i]`` (already selected and adapted; an
    embedding method takes one-element lists). Teacher features are detached. ``params``:
    the method's parameters (omitted ones take their defaults; ``feature_weight`` and
    ``stages`` are accepted and not applied: they are the trainer's).
    """
    spec = get_feature_method(name)
    if spec.fn is None or spec.inputs is None:
        raise KdtuneError(f"feature method {name!r} has no pure term"
                          + (" (it is stateful: the trainer drives it)"
                             if spec.build is not None else ""))
    if spec.build is not None:
        raise KdtuneError(f"feature method {name!r} is stateful (the trainer drives it); "
                          f"pure terms: {', '.join(pure_feature_methods())}")
    kwargs = spec.resolve(params)
    student, teacher = list(student_feats), list(teacher_feats)
    if not student or len(student) != len(teacher):
        raise KdtuneError(f"feature method {name!r} needs two equally long, non-empty lists "
                          f"of features; got {len(student)} and {len(teacher)}")
    if spec.inputs == "embedding" and len(student) != 1:
        raise KdtuneError(f"feature method {name!r} reads embeddings: pass one-element lists")
    for s, t in zip(student, teacher, strict=True):
        if not isinstance(s, Tensor) or not isinstance(t, Tensor) or s.shape[0] != t.shape[0]:
            raise KdtuneError("student and teacher features must be tensors with the same "
                              "batch size")
        if spec.maps_only and (s.dim() != 4 or t.dim() != 4):
            raise KdtuneError(f"feature method {name!r} needs (N, C, H, W) feature maps")
    out = spec.fn([s.float() for s in student], [t.detach().float() for t in teacher],
                  **{k: kwargs[k] for k in spec.loss_params})
    return out.float()


def pure_feature_methods() -> list[str]:
    return [n for n, s in FEATURES.items() if s.inputs is not None and s.build is None]


def stage_pairs(stages: str, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student index, teacher index) pairs, matched from the last stage backwards:
    pick ``k`` pairs student stage ``n_s - k`` with teacher stage ``n_t - k``."""
    usable = min(n_student, n_teacher)
    picks = parse_stages(stages)
    ks = list(range(1, usable + 1)) if picks == "all" else picks
    if not ks or max(ks) > usable:
        raise KdtuneError(f"stages {stages!r}: the student has {n_student} and the teacher "
                          f"{n_teacher} stages, so at most {usable} pairs")
    return [(n_student - k, n_teacher - k) for k in sorted(ks, reverse=True)]


def adapter(student: torch.Size, teacher: torch.Size) -> nn.Module:
    """A 1x1 convolution + BN (maps) or a linear layer (vectors) from the student's channels
    to the teacher's; the identity when they already agree."""
    if student[1] == teacher[1] and len(student) == len(teacher):
        return nn.Identity()
    if len(student) == 4 and len(teacher) == 4:
        return nn.Sequential(nn.Conv2d(student[1], teacher[1], 1, bias=False),
                             nn.BatchNorm2d(teacher[1]))
    if len(student) == 2 and len(teacher) == 2:
        return nn.Linear(student[1], teacher[1])
    raise KdtuneError(f"cannot adapt student features of shape {tuple(student[1:])} to "
                      f"teacher features of shape {tuple(teacher[1:])}")


def match_spatial(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Maps of different sizes: both average-pooled (adaptively) to the smaller size."""
    if s.dim() != 4 or s.shape[2:] == t.shape[2:]:
        return s, t
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    pool = nn.functional.adaptive_avg_pool2d
    return pool(s, size), pool(t, size)


class FeatureTerm(nn.Module):
    """The feature term in training: picks the pairs, adapts, and calls the pure term.

    ``forward(student_feats, teacher_feats, idx)`` takes the full lists the trainer hands
    over (every stage, or ``[embedding]``) and the batch's sample indices (read by stateful
    methods only); it returns the unweighted term.
    """

    def __init__(self, spec: FeatureSpec, student_shapes: Sequence[torch.Size],
                 teacher_shapes: Sequence[torch.Size], params: Mapping[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.params = {k: params[k] for k in spec.loss_params}
        if spec.inputs == "stages" and "stages" in params:
            self.pairs = stage_pairs(params["stages"], len(student_shapes), len(teacher_shapes))
        else:
            if not student_shapes or not teacher_shapes:
                raise KdtuneError(f"feature method {spec.name!r}: the student or the teacher "
                                  "has no stage to read")
            self.pairs = [(len(student_shapes) - 1, len(teacher_shapes) - 1)]
        if spec.maps_only:
            for i, j in self.pairs:
                if len(student_shapes[i]) != 4 or len(teacher_shapes[j]) != 4:
                    raise KdtuneError(f"feature method {spec.name!r} needs feature maps "
                                      "(a conv net); this pair gives vectors")
        self.adapters = nn.ModuleList(
            adapter(student_shapes[i], teacher_shapes[j]) if spec.adapt else nn.Identity()
            for i, j in self.pairs)

    def pair(self, student: Sequence[Tensor], teacher: Sequence[Tensor]
             ) -> tuple[list[Tensor], list[Tensor]]:
        ss, ts = [], []
        for (i, j), adapt in zip(self.pairs, self.adapters, strict=True):
            s, t = adapt(student[i].float()), teacher[j].detach().float()
            if self.spec.adapt:
                s, t = match_spatial(s, t)
            ss.append(s)
            ts.append(t)
        return ss, ts

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor],
                idx: Tensor) -> Tensor:
        assert self.spec.fn is not None
        ss, ts = self.pair(student, teacher)
        return self.spec.fn(ss, ts, **self.params).float()


def none(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """No feature term (never called: the trainer asks for no features)."""
    raise KdtuneError("feature method 'none' has no term")
