"""Load-time checks of a search space that build what its trials build: configs and models.

The teacher's config, every branch's TrainConfig, each model and each feature pair (on
PyTorch's meta device: no memory, no weights), so that a space no trial could run is refused
before any trial starts.

Errors are :class:`~kdtune.tune.space_schema.At` with the key path from the top of the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.config import TrainConfig
from kdtune.errors import KdtuneError
from kdtune.resolve import config_from_dict
from kdtune.tune.overlay import trial_train_config
from kdtune.tune.sampling import MAX_CONFIGS, expand, plain
from kdtune.tune.space_checks import default, teacher_dict
from kdtune.tune.space_schema import NOT_TEACHER, At

if TYPE_CHECKING:
    from kdtune.tune.space_values import Parameter

logger = logging.getLogger(__name__)

#: The teacher's architecture: (model, options, classes, input shape).
Architecture = tuple[str, dict[str, Any], int, tuple[int, ...]]


def meta_unsupported(exc: BaseException) -> bool:
    """Whether ``exc`` says that PyTorch's meta device cannot run an operation: one with no
    meta kernel (``NotImplementedError``), or one that reads a tensor's values, which a meta
    tensor does not have (``RuntimeError`` "... on meta tensors")."""
    return isinstance(exc, NotImplementedError) or (
        isinstance(exc, RuntimeError) and "meta tensor" in str(exc))


class Branches:
    """The checks of one file (``shown``: its name in warnings); models and pairs built once."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.models_checked: set[tuple[str, str, str]] = set()
        #: Keys of ``fixed`` with an effect in some trial checked so far; why the others have
        #: none (see ``kdtune.no_effect``).
        self.effective: set[str] = set()
        self.no_effect: dict[str, str] = {}
        #: Feature-pair checks skipped because the meta device cannot run them (logged once).
        self.skipped: set[tuple[str, ...]] = set()
        self.pairs_checked: set[tuple[str, ...]] = set()
        self.shapes: dict[tuple[Any, ...], list[Any]] = {}  # see feature_shapes
        self.teacher_model: Architecture | None = None

    # -- the teacher -----------------------------------------------------------------------
    def teacher_checkpoint(self, path: str) -> None:
        """The architecture of the checkpoint at ``path`` (which must exist)."""
        if not Path(path).is_file():
            raise At("teacher.path", f"no such file {path!r}")
        from kdtune.teacher import checkpoint_architecture

        self.teacher_model = checkpoint_architecture(path)

    def teacher_config(self, config: Mapping[str, Any], fixed: Mapping[str, Any]) -> None:
        """The teacher's fields make a valid config with an effect, and a model."""
        from kdtune.methods import all_params

        for key in config:
            if key in all_params():  # a plugin registered after the model was built
                raise At(f"teacher.{key}", f"not allowed here: {NOT_TEACHER['method']}")
        try:
            cfg = config_from_dict(teacher_dict(fixed, config))
        except KdtuneError as exc:
            raise At("teacher", str(exc)) from None
        from kdtune.no_effect import refuse_no_effect

        try:
            refuse_no_effect(cfg, {k: f"teacher.{k}" for k in config})
        except KdtuneError as exc:  # "teacher.KEY has no effect here: REASON; drop it"
            said, _, reason = str(exc).partition(": ")
            raise At(said, reason) from None
        self.model_options(cfg, lambda k: f"teacher.{k}" if k in config else f"fixed.{k}")
        self.model_values(cfg, "teacher")
        from kdtune.data.datasets import dataset_shape

        self.teacher_model = (cfg.model, cfg.model_kwargs(), *dataset_shape(cfg.dataset))

    # -- the branches ----------------------------------------------------------------------
    def check(self, parameters: tuple[Parameter, ...], fixed: Mapping[str, Any],
              has_teacher: bool) -> None:
        """Every parameter is reachable and every branch of the categorical tree is valid;
        every key of ``fixed`` has an effect in some trial.

        A branch fixes the parameters that others depend on; in each, a config is built from
        representative values (first choice / low), then once per other choice and ``high``.
        """
        from kdtune.methods import (
            get_feature_method,
            get_method,
            list_feature_methods,
            list_methods,
        )
        from kdtune.methods.registry import feature_params

        structural = {ref for p in parameters for ref, _ in p.when}
        branches = expand([p for p in parameters if p.name in structural], At(
            "parameters", f"more than {MAX_CONFIGS} combinations of the parameters named in "
                          "conditions"))
        for p in parameters:
            if p.when and not any(p.is_active(b) for b in branches):
                raise At(f"parameters.{p.name}.when", f"impossible condition: {p.name} is never "
                                                      "active (its conditions exclude each other)")
        specs = {m: get_method(m) for m in list_methods()}
        method_p = next((p for p in parameters if p.name == "method"), None)
        fspecs = {m: get_feature_method(m) for m in list_feature_methods()}
        feature_p = next((p for p in parameters if p.name == "feature_method"), None)
        for branch in branches:
            active = [p for p in parameters if p.is_active(branch)]
            rep = dict(branch)
            for p in active:
                if p.name not in branch:
                    rep[p.name] = p.choices[0] if p.choices is not None else p.low
            method = rep.get("method", fixed.get("method", default("method")))
            spec = specs[method]
            feature = rep.get("feature_method",
                              fixed.get("feature_method", default("feature_method")))
            fspec = fspecs[feature]
            where = "parameters.method.choices" if "method" in rep else "fixed.method"
            for needs, what in ((spec.needs_teacher_model, f"method {method}"),
                                (fspec.needs_teacher, f"feature method {feature}")):
                if needs and not has_teacher:
                    raise At("teacher", f"missing; {what} needs a teacher: add teacher: "
                                        "{path: FILE} or the teacher's TrainConfig fields "
                                        "(model, hidden, epochs, ...)")
            missing = [q.name for q in spec.params
                       if q.required and q.name not in fixed and q.name not in rep]
            if missing:
                names = (missing[0] if len(missing) == 1
                         else f"{', '.join(missing[:-1])} and {missing[-1]}")
                raise At(where, f"method {method} needs {names}: add "
                                f"{'it' if len(missing) == 1 else 'them'} under parameters "
                                f"with when: {{method: [{method}]}} or under fixed")
            for p in active:
                if p.name in feature_params() or (p.name == "kd_warmup" and fspec.reads(p.name)):
                    if fspec.reads(p.name):
                        continue
                    users = [c for c in (feature_p.choices if feature_p and feature_p.choices
                                         else fspecs) if fspecs[c].reads(p.name)]
                    raise At(f"parameters.{p.name}", f"active with feature method {feature}, "
                             f"which does not use {p.name}; add when: "
                             f"{{feature_method: [{', '.join(users)}]}}")
                if not spec.reads(p.name):
                    users = [c for c in (method_p.choices if method_p and method_p.choices
                                         else specs) if specs[c].reads(p.name)]
                    raise At(f"parameters.{p.name}", f"active with method {method}, which does "
                             f"not use {p.name}; add when: {{method: [{', '.join(users)}]}}")
            self.config(rep, fixed, "parameters")
            for p in active:
                if p.name in branch:
                    continue
                others = (p.choices[1:] if p.choices is not None else (p.high,))
                key = f"parameters.{p.name}.{'choices' if p.choices is not None else 'high'}"
                for value in others:
                    self.config({**rep, p.name: value}, fixed, key)
        for name, value in fixed.items():  # a default is not the user's input
            if name not in self.effective and value != default(name):
                raise At(f"fixed.{name}", f"has no effect here: {self.no_effect[name]}; drop it")

    def config(self, params: Mapping[str, Any], fixed: Mapping[str, Any], key: str) -> None:
        """The trial of ``params``: its config, model and feature pair; which keys of
        ``fixed`` have an effect in it. ``key`` is blamed (``parameters``: the key of the
        value at fault)."""
        from kdtune.no_effect import no_effect

        try:
            cfg = trial_train_config(fixed, params)
        except KdtuneError as exc:
            raise At(key, f"{exc}{_in_trial(params)}") from None
        for name in fixed:  # a fixed value has an effect when it has one in some trial
            reason = no_effect(cfg, name) if name not in self.effective else None
            if reason is None:
                self.effective.add(name)
            else:
                self.no_effect.setdefault(name, reason)
        if key != "parameters":  # a variant: blame the value that was varied
            self.model_options(cfg, lambda k: key)
        else:
            self.model_options(cfg, lambda k: f"parameters.{k}" if k in params else f"fixed.{k}")
        self.model_values(cfg, key, params)
        blamed = "parameters.feature_method.choices" if "feature_method" in params \
            else "fixed.feature_method"
        self.feature_pair(cfg, blamed if key == "parameters" else key, params)

    # -- models ----------------------------------------------------------------------------
    def model_options(self, cfg: TrainConfig, path_of: Callable[[str], str]) -> None:
        """Every model field set is an option of the model."""
        from kdtune.models import model_options

        allowed = model_options(cfg.model)
        for key in cfg.model_kwargs():
            if key not in allowed:
                takes = ", ".join(sorted(allowed)) or "no options"
                raise At(path_of(key), f"model {cfg.model!r} does not take {key!r}; it takes: "
                                       f"{takes}")

    def model_values(self, cfg: TrainConfig, key: str,
                     params: Mapping[str, Any] | None = None) -> None:
        """Build the model of ``cfg`` on the meta device: the model's own checks refuse values
        such as a hidden width of 0 here, not in a trial."""
        model_key = (cfg.dataset, cfg.model, repr(sorted(cfg.model_kwargs().items())))
        if model_key in self.models_checked:
            return
        import torch

        from kdtune.data.datasets import dataset_shape
        from kdtune.models import create_model

        num_classes, in_shape = dataset_shape(cfg.dataset)
        try:
            with torch.device("meta"):
                create_model(cfg.model, num_classes, in_shape, **cfg.model_kwargs())
        except KdtuneError as exc:
            raise At(key, f"{exc}{'' if params is None else _in_trial(params)}") from None
        self.models_checked.add(model_key)

    def feature_pair(self, cfg: TrainConfig, key: str, params: Mapping[str, Any]) -> None:
        """Build ``cfg``'s feature term for its student and the teacher on the meta device: a
        pair the method cannot serve (feature maps asked of an MLP, stages one of them lacks)
        is refused here, not in every trial."""
        from kdtune.data.datasets import dataset_shape
        from kdtune.methods import get_feature_method

        spec = get_feature_method(cfg.feature_method)
        options = cfg.model_kwargs()
        pair = (cfg.model, repr(sorted(options.items())), cfg.feature_method,
                repr(sorted((k, v) for k, v in cfg.method_params.items() if spec.reads(k))))
        if spec.inputs is None or self.teacher_model is None or pair in self.pairs_checked:
            return
        import torch

        name, kwargs, num_classes, in_shape = self.teacher_model
        shape = dataset_shape(cfg.dataset)
        if (num_classes, tuple(in_shape)) != tuple(shape):
            return  # a teacher of other data: loading it says so
        try:
            student = self.feature_shapes(cfg.model, options, *shape, spec.inputs)
            teacher = self.feature_shapes(name, kwargs, num_classes, in_shape, spec.inputs)
            with torch.device("meta"):
                spec.make_term(student, teacher, cfg.method_params, 2)
        except Exception as exc:
            if not meta_unsupported(exc):
                reason = str(exc) if isinstance(exc, KdtuneError) else \
                    f"building feature method {cfg.feature_method!r} for student " \
                    f"{cfg.model!r} and teacher {name!r} failed: {type(exc).__name__}: " \
                    f"{' '.join(str(exc).split())[:300]}"
                raise At(key, f"{reason}{_in_trial(params)}") from None
            # a model the meta device cannot run: its trials will tell (said once per kind)
            skipped = (cfg.feature_method, cfg.model, name, type(exc).__name__)
            if skipped not in self.skipped:
                self.skipped.add(skipped)
                logger.warning("%s: the load-time check of feature method %r for student %r and "
                               "teacher %r was skipped: the meta device cannot run them (%s)",
                               self.shown, cfg.feature_method, cfg.model, name,
                               type(exc).__name__)
        self.pairs_checked.add(pair)

    def feature_shapes(self, model: str, kwargs: Mapping[str, Any], num_classes: int,
                       in_shape: tuple[int, ...], inputs: str) -> list[Any]:
        """The shapes of a model's features (``stages`` or ``embedding``) for a batch of 2,
        from one pass on the meta device per architecture."""
        key = (model, repr(sorted(kwargs.items())), num_classes, tuple(in_shape), inputs)
        if key not in self.shapes:
            import torch

            from kdtune.models import create_model

            with torch.device("meta"), torch.no_grad():
                built = create_model(model, num_classes, in_shape, **kwargs).eval()
                feats = built.forward_features(torch.empty(2, *in_shape))
            self.shapes[key] = [f.shape for f in (feats.stages if inputs == "stages"
                                                  else [feats.embedding])]
        return self.shapes[key]


def _in_trial(params: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{k}={plain(v)}" for k, v in params.items())
    return f" (in the trial {{{shown}}})"
