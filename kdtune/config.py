"""The training config: one frozen dataclass, loaded from dicts/YAML and validated.

Every hop of a hyper-parameter (YAML -> search space -> trial -> trainer) ends here: the
trainer reads nothing but a :class:`TrainConfig`.

A method's own hyper-parameters (``nckd_weight``, ``t_right``, ...; see
:mod:`kdtune.methods`) live in the one field ``method_params``, while every user-facing form
stays flat: :meth:`TrainConfig.from_dict` takes ``nckd_weight: 6`` beside ``alpha: 0.5`` and
:meth:`TrainConfig.to_dict` writes it back the same way (YAML, CLI flags, MLflow params).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdtune.errors import KdtuneError, choose_one

SCHEDULES = ("multistep", "cosine")
TEACHER_OUTPUTS = ("auto", "cached", "live")
DEVICES = ("auto", "cpu", "cuda")

# Fields handed to ``create_model`` when set; everything else is a training setting.
MODEL_FIELDS = ("hidden", "dropout", "blocks", "block", "stem_stride", "width", "depth",
                "widen_factor")

#: Keys a saved config file leaves out: where a run's files go belongs to the command that
#: runs it (``--out``), so training again from a saved config never writes over that run.
NOT_SAVED = ("out",)


def saved_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A flat config dict as a config file saves it: without the keys in :data:`NOT_SAVED`."""
    return {k: v for k, v in config.items() if k not in NOT_SAVED}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes one training run (teacher or student)."""

    # data
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    split_seed: int = 0
    val_fraction: float = 0.1
    train_per_class: int | None = None
    augment: bool | None = None  # None: the dataset's default
    # model (unset fields keep the model's defaults)
    model: str = "mlp"
    hidden: tuple[int, ...] | None = None
    dropout: float | None = None
    blocks: tuple[int, ...] | None = None
    block: str | None = None
    stem_stride: int | None = None
    width: int | None = None
    depth: int | None = None
    widen_factor: int | None = None
    # distillation
    method: str = "vanilla"
    alpha: float = 0.5
    temperature: float = 4.0
    kd_warmup: int = 0  # epochs over which the distillation terms ramp up from 0 (0: none)
    # the feature/relation term (kdtune.methods.features); none: no feature term
    feature_method: str = "none"
    # the method's and the feature method's own hyper-parameters (flat keys in
    # from_dict/to_dict), with their defaults filled in on construction
    method_params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    teacher: str | None = None
    # where teacher logits come from: auto (cached when they can be, else live), cached
    # (un-augmented logits, or per-view logits computed once for augmented training), live
    teacher_outputs: str = "auto"
    # optimisation
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    seed: int = 0
    # execution
    device: str = "auto"
    threads: int | None = None
    amp: bool = True  # autocast on CUDA only; ignored on CPU
    channels_last: bool | None = None  # None: on for conv nets on CUDA
    compile: bool = False  # torch.compile the student
    out: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """Every key :meth:`from_dict` accepts: the fields, with every registered method
        parameter in place of ``method_params``."""
        from kdtune.methods import all_params

        names = [f.name for f in dataclasses.fields(cls)]
        at = names.index("method_params")
        return [*names[:at], *all_params(), *names[at + 1:]]

    @classmethod
    def key_types(cls) -> dict[str, Any]:
        """The type of every key :meth:`from_dict` accepts (a method parameter's own type)."""
        from kdtune.methods import all_params

        hints = typing.get_type_hints(cls)
        params = {name: p.type for name, p in all_params().items()}
        return {k: params[k] if k in params else hints[k] for k in cls.field_names()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> TrainConfig:
        """Build from a plain flat mapping (YAML, CLI, a search trial), coercing types.

        Unknown keys are rejected with the closest valid key as a suggestion. Method
        parameters go to ``method_params``; one set to ``None`` counts as not given.
        """
        from kdtune.methods import all_params

        types_ = cls.key_types()
        params = all_params()
        kwargs: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for key, value in data.items():
            if key not in types_:
                names = list(types_)
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise KdtuneError(f"{where}: unknown key {key!r}{hint}; "
                                  f"valid keys: {', '.join(names)}")
            if key in params:
                if value is not None:
                    own[key] = _coerce(value, types_[key], f"{where}: {key}")
            else:
                kwargs[key] = _coerce(value, types_[key], f"{where}: {key}")
        return cls(**kwargs, method_params=own)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML file; ``overrides`` (e.g. CLI flags) win over the file."""
        data = load_yaml_mapping(path)
        data.update(overrides)
        return cls.from_dict(data, where=str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``. A new ``method`` or ``feature_method`` without
        ``method_params`` keeps the parameters the pair also declares and drops the others
        (the new methods' defaults fill in)."""
        switched = "method" in changes or "feature_method" in changes
        if switched and "method_params" not in changes:
            from kdtune.methods import feature_method_params, method_params

            own = {**method_params(changes.get("method", self.method)),
                   **feature_method_params(changes.get("feature_method", self.feature_method))}
            changes["method_params"] = {k: v for k, v in self.method_params.items() if k in own}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, flat, YAML/JSON-friendly dict (tuples become lists): the method's parameters
        in place of ``method_params``, so ``from_dict(cfg.to_dict()) == cfg``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "method_params":
                out.update(value)
            else:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_saved_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` as a config file saves it (``config.yaml``, ``best --config-out``):
        without the keys in :data:`NOT_SAVED`."""
        return saved_config(self.to_dict())

    def model_kwargs(self) -> dict[str, Any]:
        """The model fields that are set, as keyword arguments for ``create_model``."""
        return {k: getattr(self, k) for k in MODEL_FIELDS if getattr(self, k) is not None}


def parse_yaml(raw: str | bytes, shown: str) -> Any:
    """``yaml.safe_load`` whose syntax errors are one line naming the file and line."""
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise KdtuneError(f"{shown}: invalid YAML{at}") from None


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors are one line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise KdtuneError(f"cannot read config {str(path)!r}: {exc.strerror}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KdtuneError(f"{path}: expected a mapping of keys to values, got "
                          f"{type(data).__name__}")
    return data


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type, or raise a one-line error."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is tuple:
        if isinstance(value, int | str) and not isinstance(value, bool):
            value = _split_ints(value, where)
        if not isinstance(value, list | tuple):
            raise KdtuneError(f"{where}: expected a list of integers, got {value!r}")
        return tuple(_coerce(v, int, where) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise KdtuneError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise KdtuneError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise KdtuneError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, float):  # 5.0 -> 5, but 2.5 is not silently truncated to 2
            if value.is_integer():
                return int(value)
            raise KdtuneError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise KdtuneError(f"{where}: expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise KdtuneError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise KdtuneError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise KdtuneError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _split_ints(value: int | str, where: str) -> list[int]:
    """``"300-300"``, ``"1,1,0,0"`` or ``300`` -> a list of ints."""
    if isinstance(value, int):
        return [value]
    text = value.strip()
    # Commas/spaces separate; a dash separates only without them ("300-300"), so that
    # "-1,1,0,0" keeps its minus sign (and is refused by the model) instead of becoming 1.
    if re.search(r"[,\s]", text):
        parts = [p for p in re.split(r"[,\s]+", text) if p]
    else:
        parts = text.split("-") if text else []
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise KdtuneError(f"{where}: expected integers like 300-300 or 1,1,0,0, "
                          f"got {value!r}") from None


def _validate(cfg: TrainConfig) -> None:
    """Range checks that need no data. Model and dataset names are checked here too."""
    from kdtune.data import list_datasets
    from kdtune.methods import get_feature_method, get_method
    from kdtune.models import list_models

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
    object.__setattr__(cfg, "method_params", resolved)
    if cfg.schedule not in SCHEDULES:
        raise choose_one("schedule", cfg.schedule, SCHEDULES)
    if cfg.teacher_outputs not in TEACHER_OUTPUTS:
        raise choose_one("teacher_outputs", cfg.teacher_outputs, TEACHER_OUTPUTS)
    if cfg.device not in DEVICES:
        raise choose_one("device", cfg.device, DEVICES)
    if not 0.0 <= cfg.alpha <= 1.0:
        raise KdtuneError(f"alpha {cfg.alpha:g} is outside [0, 1] (alpha weighs the hard-label "
                          "loss; 1 means no distillation)")
    if spec.uses_temperature and cfg.temperature <= 0:
        raise KdtuneError(f"temperature {cfg.temperature:g} must be > 0")
    if cfg.kd_warmup < 0:
        raise KdtuneError(f"kd_warmup {cfg.kd_warmup} must be >= 0 (epochs; 0: no warm-up)")
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size}
    for name, value in positive.items():
        if value < 1:
            raise KdtuneError(f"{name} {value} must be >= 1")
    if cfg.lr <= 0:
        raise KdtuneError(f"lr {cfg.lr:g} must be > 0")
    if cfg.weight_decay < 0 or not 0 <= cfg.momentum < 1:
        raise KdtuneError(f"weight_decay {cfg.weight_decay:g} must be >= 0 and momentum "
                          f"{cfg.momentum:g} in [0, 1)")
    if cfg.train_per_class is not None and cfg.train_per_class < 1:
        raise KdtuneError(f"train_per_class {cfg.train_per_class} must be >= 1")
    if not 0 < cfg.val_fraction <= 0.5:
        raise KdtuneError(f"val_fraction {cfg.val_fraction:g} must be in (0, 0.5]")
    if cfg.threads is not None and cfg.threads < 1:
        raise KdtuneError(f"threads {cfg.threads} must be >= 1")
