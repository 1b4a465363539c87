"""The training config: one frozen dataclass, a plain value that checks its own fields.

Every hop of a hyper-parameter (YAML -> search space -> trial -> trainer) ends here: the
trainer reads nothing but a :class:`TrainConfig`. This module imports no registry and no
torch: user input becomes a config in :mod:`kdtune.resolve`, which also checks the names the
registries know (dataset, model, methods and their parameters) and fills in the method
parameters' defaults; the trainer resolves the config it is given the same way.

A method's own hyper-parameters (``nckd_weight``, ``t_right``, ...; see
:mod:`kdtune.methods`) live in the one field ``method_params``, while every user-facing form
stays flat: :func:`kdtune.resolve.config_from_dict` takes ``nckd_weight: 6`` beside
``alpha: 0.5`` and :meth:`TrainConfig.to_dict` writes it back the same way (YAML, CLI flags,
MLflow params).
"""

from __future__ import annotations

import dataclasses
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


def _f(default: Any, group: str, help: str = "") -> Any:
    """A field with ``default`` whose ``kdtune train`` flag sits in the argument group
    ``group`` (see :mod:`kdtune.train_flags`), described by ``help``."""
    return field(default=default, metadata={"flag": group, "help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes one training run (teacher or student).

    A field's metadata names the group of its ``kdtune train``/``teacher`` flag and the
    flag's help (:mod:`kdtune.train_flags` makes the flags of them); a field without
    (``method``, ``feature_method``, ``method_params``, ``amp``, ``out``) has its flag, if
    any, made elsewhere.
    """

    # data
    dataset: str = _f("digits", "data", "digits (default), mnist, fashion_mnist, cifar10, "
                      "cifar100, synthetic")
    data_root: str | None = _f(None, "data", "folder with torchvision's files")
    download: bool = _f(False, "data", "let torchvision download the dataset (needs internet)")
    split_seed: int = _f(0, "data", "fixes train/val/test (default 0)")
    val_fraction: float = _f(0.1, "data", "default 0.1")
    train_per_class: int | None = _f(None, "data", "train on only this many images per class")
    augment: bool | None = _f(None, "data", "random crop + flip (default: on for CIFAR, off "
                              "otherwise)")  # None: the dataset's default
    # model (unset fields keep the model's defaults)
    model: str = _f("mlp", "model", "mlp, resnet, wrn or a preset (resnet20, ...)")
    hidden: tuple[int, ...] | None = _f(None, "model", "MLP widths, e.g. 1200-1200 or 1200 1200")
    dropout: float | None = _f(None, "model")
    blocks: tuple[int, ...] | None = _f(None, "model", "ResNet blocks per stage, e.g. 1,1,0,0 "
                                        "or 1 1 0 0")
    block: str | None = _f(None, "model", "basic or bottleneck")
    stem_stride: int | None = _f(None, "model", "1, 2 or 4")
    width: int | None = _f(None, "model", "ResNet base channels")
    depth: int | None = _f(None, "model", "WRN depth")
    widen_factor: int | None = _f(None, "model", "WRN k")
    # distillation
    method: str = "vanilla"
    alpha: float = _f(0.5, "distillation", "weight of the hard-label loss")
    temperature: float = _f(4.0, "distillation")
    kd_warmup: int = _f(0, "distillation", "epochs over which the distillation term ramps up "
                        "linearly from 0 (default 0: no warm-up)")
    # the feature/relation term (kdtune.methods.features); none: no feature term
    feature_method: str = "none"
    # the method's and the feature method's own hyper-parameters (flat keys in user input
    # and to_dict); kdtune.resolve fills in their defaults
    method_params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    teacher: str | None = _f(None, "distillation", "teacher checkpoint (.pt) from `kdtune "
                             "teacher`")
    # where teacher logits come from: auto (cached when they can be, else live), cached
    # (un-augmented logits, or per-view logits computed once for augmented training), live
    teacher_outputs: str = _f("auto", "distillation", "auto (default): cached teacher logits "
                              "when they exist, else live; cached: compute them (per "
                              "augmentation view when augmenting) once; live: run the teacher "
                              "on every batch")
    # optimisation
    epochs: int = _f(30, "training")
    batch_size: int = _f(64, "training")
    lr: float = _f(0.05, "training")
    momentum: float = _f(0.9, "training")
    weight_decay: float = _f(5e-4, "training")
    schedule: str = _f("multistep", "training", "multistep (default) or cosine")
    seed: int = _f(0, "training", "init, batch order, augmentation")
    # execution
    device: str = _f("auto", "training", "auto (default), cpu or cuda")
    threads: int | None = _f(None, "training", "torch CPU threads")
    amp: bool = True  # autocast on CUDA only; ignored on CPU
    channels_last: bool | None = _f(None, "training", "channels_last memory format (default: "
                                    "conv nets on CUDA)")  # None: on for conv nets on CUDA
    compile: bool = _f(False, "training", "torch.compile the student")
    out: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method_params", dict(self.method_params))
        check_fields(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` to fields other than the methods: a new ``method`` or
        ``feature_method`` changes which parameters ``method_params`` holds, which
        :func:`kdtune.resolve.replace_config` works out."""
        if "method" in changes or "feature_method" in changes:
            raise TypeError("TrainConfig.replace cannot change the methods; use "
                            "kdtune.resolve.replace_config")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, flat, YAML/JSON-friendly dict (tuples become lists): the method's parameters
        in place of ``method_params``, so ``config_from_dict(cfg.to_dict())`` is ``cfg``
        resolved."""
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


def check_fields(cfg: TrainConfig) -> None:
    """The checks a config's own values allow (ranges, fixed choices); the names that
    registries know (dataset, model, methods and their parameters) are checked where user
    input becomes a config and where a run starts (:func:`kdtune.resolve.resolve_config`)."""
    if cfg.schedule not in SCHEDULES:
        raise choose_one("schedule", cfg.schedule, SCHEDULES)
    if cfg.teacher_outputs not in TEACHER_OUTPUTS:
        raise choose_one("teacher_outputs", cfg.teacher_outputs, TEACHER_OUTPUTS)
    if cfg.device not in DEVICES:
        raise choose_one("device", cfg.device, DEVICES)
    if not 0.0 <= cfg.alpha <= 1.0:
        raise KdtuneError(f"alpha {cfg.alpha:g} is outside [0, 1] (alpha weighs the hard-label "
                          "loss; 1 means no distillation)")
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
