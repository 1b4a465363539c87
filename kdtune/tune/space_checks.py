"""Rules across the sections of a search-space file, checked on its validated document.

A key searched or fixed but not both, conditions on earlier parameters, objectives, the
sampler, the scheduler and the resources against the rest; the teacher's share of ``fixed``.

Each rule raises :class:`~kdtune.tune.space_schema.At` with the key path from the top of the
file; :func:`kdtune.tune.space.load_space` adds the file's name. Checks that build a trial's
config, model or feature pair are :mod:`kdtune.tune.space_branches`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kdtune.config import TrainConfig
from kdtune.errors import KdtuneError, did_you_mean
from kdtune.tune.sampling import MAX_CONFIGS, expand, plain
from kdtune.tune.space_schema import DATA_KEYS, RUNG_METRICS, TEACHER_DEFAULT_KEYS, At, coerce_key
from kdtune.tune.space_values import hashable
from kdtune.vocabulary import MODES as METRIC_MODES

if TYPE_CHECKING:
    from kdtune.tune.space_values import Parameter


def conditions(name: str, when: Mapping[str, tuple[Any, ...]] | None,
               earlier: Mapping[str, Parameter], fixed: Mapping[str, Any]
               ) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """Parameter ``name``'s ``when:`` as (parameter, allowed values) pairs: each names a
    categorical parameter declared before it, with values among its choices."""
    key = f"parameters.{name}"
    if name in fixed:
        raise At(key, f"also set under fixed.{name}; set it in one place")
    out = []
    for ref, values in (when or {}).items():
        where = f"{key}.when.{ref}"
        ref_p = earlier.get(ref)
        if ref_p is None:
            if ref == name:
                raise At(where, "a parameter cannot depend on itself")
            if ref in fixed:
                raise At(where, f"{ref} is under fixed; conditions refer to parameters "
                                "declared before this one")
            known = list(earlier)
            raise At(where, f"{ref!r} is not a parameter declared before {name}; declared so "
                            f"far: {', '.join(known) or '(none)'}{did_you_mean(ref, known)}")
        if ref_p.choices is None:
            raise At(where, f"conditions need a categorical parameter; {ref} is {ref_p.type}")
        shown = [str(plain(c)) for c in ref_p.choices]
        allowed: list[Any] = []
        for value in values:
            with contextlib.suppress(KdtuneError):  # not of the type: not a choice either
                value = hashable(coerce_key(ref, value))
            if value not in ref_p.choices:
                raise At(where, f"impossible condition: {plain(value)!r} is not a choice of "
                                f"{ref} (choices: {', '.join(shown)})"
                                f"{did_you_mean(plain(value), shown)}")
            if value not in allowed:
                allowed.append(value)
        out.append((ref, tuple(allowed)))
    return tuple(out)


def objectives(doc: Any) -> list[tuple[str, str]]:
    """(metric, mode) of each objective; the mode defaults to the metric's direction."""
    items = [doc] if doc is not None and not isinstance(doc, list) else doc
    if items is None:
        return [("val_accuracy", "max")]
    out: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        key = "objective" if not isinstance(doc, list) else f"objective[{i}]"
        if item.metric in [m for m, _ in out]:
            raise At(f"{key}.metric", f"{item.metric} is already an objective")
        out.append((item.metric, item.mode or METRIC_MODES[item.metric]))
    return out


def search(doc: Any, parameters: tuple[Parameter, ...], count: int) -> dict[str, Any]:
    """``SearchSettings``' fields: the sampler fits ``count`` objectives and the parameters;
    a grid's size is its ``num_samples`` unless a smaller one is given."""
    multi = count > 1
    sampler = doc.sampler or ("nsga2" if multi else "tpe")
    if multi and sampler != "nsga2":
        raise At("search.sampler", f"{count} objectives need sampler nsga2, not {sampler}")
    if not multi and sampler == "nsga2":
        raise At("search.sampler", "nsga2 is for several objectives; with one objective use "
                                   "tpe, random or grid")
    num = doc.num_samples
    if sampler == "grid":
        for p in parameters:
            if p.choices is None:
                raise At(f"parameters.{p.name}.type", f"sampler grid takes only categorical "
                         f"parameters; {p.name} is {p.type} (list its values as choices, or "
                         "use sampler tpe or random)")
        size = len(expand(parameters, At("parameters", f"the grid has more than {MAX_CONFIGS} "
                                                       "configurations")))
        if num is None:
            num = size
        elif num > size:
            raise At("search.num_samples", f"{num} is more than the grid's {size} "
                                           "configurations")
    elif num is None:
        raise At("search.num_samples", f"missing; sampler {sampler} needs the number of trials "
                                       "(an integer >= 1)")
    warm = doc.warm_start
    if warm is not None:
        if sampler == "grid":
            raise At("search.warm_start", "a grid runs its own configurations; warm start is "
                                          "for tpe, random and nsga2")
        if warm.top > num:
            raise At("search.warm_start.top", f"{warm.top} is more than num_samples {num}")
    return {"num_samples": num, "max_concurrent": doc.max_concurrent, "sampler": sampler,
            "seed": doc.seed, "warm_start": None if warm is None else (warm.source, warm.top)}


def scheduler(doc: Any, parameters: Iterable[Parameter], fixed: Mapping[str, Any],
              objectives: list[tuple[str, str]]) -> dict[str, Any]:
    """``SchedulerSettings``' fields: ASHA ranks by a per-epoch metric and stops within the
    epochs a trial trains."""
    if doc.type == "none":
        return {"type": "none", "grace_period": None, "reduction_factor": None, "max_t": None}
    metric, mode = objectives[0]
    if doc.metric is not None:
        mode = mode if doc.metric == metric else METRIC_MODES[doc.metric]
        metric = doc.metric
    elif metric not in RUNG_METRICS:
        where = "objective" if len(objectives) == 1 else "objective[0]"
        raise At(f"{where}.metric", f"ASHA acts on the first objective, which must be reported "
                                    f"every epoch ({', '.join(RUNG_METRICS)}), not {metric}; "
                                    "reorder the objectives, set scheduler.metric or "
                                    "scheduler: {type: none}")
    epochs = max_epochs(parameters, fixed)
    max_t = epochs if doc.max_t is None else doc.max_t
    if max_t > epochs:
        raise At("scheduler.max_t", f"{max_t} is more than the {epochs} epochs a trial trains "
                                    "at most")
    if doc.grace_period > max_t:
        raise At("scheduler.grace_period", f"{doc.grace_period} is more than max_t {max_t}")
    return {"type": "asha", "grace_period": doc.grace_period,
            "reduction_factor": doc.reduction_factor, "max_t": max_t, "metric": metric,
            "mode": mode}


def resources(doc: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """``Resources``' fields: a sweep on ``device: cuda`` gives each trial a GPU share."""
    if doc.gpus == 0 and fixed.get("device") == "cuda":
        raise At("resources.gpus", "0, but fixed.device is cuda; give each trial a GPU share "
                                   "(e.g. gpus: 0.25) or use device auto")
    return {"cpus": doc.cpus, "gpus": doc.gpus, "max_retries": doc.max_retries}


def max_epochs(parameters: Iterable[Parameter], fixed: Mapping[str, Any]) -> int:
    """The most epochs a trial trains."""
    for p in parameters:
        if p.name == "epochs":
            return int(max(p.choices) if p.choices is not None else p.high)  # type: ignore
    return int(fixed.get("epochs", default("epochs")))


def default(name: str) -> Any:
    """``TrainConfig``'s default for field ``name``."""
    return TrainConfig.__dataclass_fields__[name].default


def teacher_dict(fixed: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The teacher's flat config: data (and unless ``config`` sets them, augment, device,
    threads, amp) from ``fixed``, the rest from the teacher section; method none."""
    data = {k: fixed[k] for k in (*DATA_KEYS, *TEACHER_DEFAULT_KEYS) if k in fixed}
    data.update(config)
    data["method"] = "none"
    return data
