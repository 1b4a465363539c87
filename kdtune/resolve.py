"""Where user input becomes a :class:`~kdtune.config.TrainConfig`, checked against the registries.

A config file, CLI flags, a search trial or an MLflow run's params are flat mappings:
:func:`config_from_dict` coerces each key to its type (:mod:`kdtune.coerce`), puts the method
parameters into ``method_params`` and returns the config :func:`resolve_config` made of it.
:func:`resolve_config` is also what the trainer does to the config it is given: the dataset,
the model, the method and the feature method must be registered, and the method parameters
are checked by the pair of methods and completed with their defaults.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdtune.coerce import coerce
from kdtune.config import TrainConfig, load_yaml_mapping
from kdtune.data import list_datasets
from kdtune.errors import KdtuneError, choose_one, did_you_mean
from kdtune.methods import (
    all_params,
    feature_method_params,
    get_feature_method,
    get_method,
    method_params,
)
from kdtune.models import list_models, model_options


def config_keys() -> list[str]:
    """Every key :func:`config_from_dict` accepts: the config's fields, with every registered
    method parameter in place of ``method_params``."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    at = names.index("method_params")
    return [*names[:at], *all_params(), *names[at + 1:]]


def key_types() -> dict[str, Any]:
    """The type of every key :func:`config_from_dict` accepts (a method parameter's own)."""
    hints = typing.get_type_hints(TrainConfig)
    params = {name: p.type for name, p in all_params().items()}
    return {k: params[k] if k in params else hints[k] for k in config_keys()}


def config_from_dict(data: Mapping[str, Any], *, where: str = "config") -> TrainConfig:
    """The resolved config of a flat mapping (YAML, CLI, a search trial), types coerced.

    An unknown key is refused with the closest valid key as a suggestion. Method parameters
    go to ``method_params``; one set to ``None`` counts as not given. Errors are one line
    starting with ``where``'s key path.
    """
    types_ = key_types()
    params = all_params()
    kwargs: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in data.items():
        if key not in types_:
            names = list(types_)
            raise KdtuneError(f"{where}: unknown key {key!r}{did_you_mean(key, names)}; "
                              f"valid keys: {', '.join(names)}")
        if key in params:
            if value is not None:
                own[key] = coerce(value, types_[key], f"{where}: {key}")
        else:
            kwargs[key] = coerce(value, types_[key], f"{where}: {key}")
    return resolve_config(TrainConfig(**kwargs, method_params=own))


def config_from_yaml(path: str | Path, **overrides: Any) -> TrainConfig:
    """The resolved config of a YAML file; ``overrides`` (e.g. CLI flags) win over the file."""
    data = load_yaml_mapping(path)
    data.update(overrides)
    return config_from_dict(data, where=str(path))


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` checked against the registries, its method parameters completed.

    The dataset, the model, the method and the feature method must be registered; every
    method parameter must be one the method or the feature method declares, of its type and
    range; a missing one takes its method's default. Returns ``cfg`` itself when it is
    already resolved, else a copy.
    """
    if cfg.dataset not in list_datasets():
        raise choose_one("dataset", cfg.dataset, list_datasets())
    if cfg.model not in list_models():
        raise choose_one("model", cfg.model, list_models())
    spec = get_method(cfg.method)
    fspec = get_feature_method(cfg.feature_method)
    own = [p.name for p in spec.params]
    theirs = [p.name for p in fspec.params]
    given = dict(cfg.method_params)
    for key, value in given.items():
        if key not in own and key not in theirs and value is not None:
            if not theirs:  # no feature term: the method's own message
                spec.resolve(given)
            raise KdtuneError(
                f"neither method {cfg.method!r} nor feature method {cfg.feature_method!r} "
                f"takes {key!r}; their parameters: {', '.join([*own, *theirs]) or '(none)'}")
    resolved = {**spec.resolve({k: v for k, v in given.items() if k in own}),
                **fspec.resolve({k: v for k, v in given.items() if k in theirs})}
    if spec.uses_temperature and cfg.temperature <= 0:
        raise KdtuneError(f"temperature {cfg.temperature:g} must be > 0")
    if resolved == given:
        return cfg
    return dataclasses.replace(cfg, method_params=resolved)


def check_model_options(cfg: TrainConfig) -> None:
    """Refuse a model field ``cfg`` sets that its model does not take (the message
    ``create_model`` gives, without building the model)."""
    allowed = model_options(cfg.model)
    unknown = [k for k in cfg.model_kwargs() if k not in allowed]
    if unknown:
        bad = ", ".join(repr(k) for k in unknown)
        takes = ", ".join(sorted(allowed)) or "no options"
        raise KdtuneError(f"model {cfg.model!r} does not take {bad}; it takes: {takes}")


def replace_config(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A resolved copy of ``cfg`` with ``changes``. A new ``method`` or ``feature_method``
    without ``method_params`` keeps the parameters the new pair also declares and drops the
    others (the new methods' defaults fill in)."""
    switched = "method" in changes or "feature_method" in changes
    if switched and "method_params" not in changes:
        own = {**method_params(changes.get("method", cfg.method)),
               **feature_method_params(changes.get("feature_method", cfg.feature_method))}
        changes["method_params"] = {k: v for k, v in cfg.method_params.items() if k in own}
    return resolve_config(dataclasses.replace(cfg, **changes))
