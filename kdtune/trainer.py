"""The one distillation trainer shared by ``kdtune train``, teachers and every search trial.

Read top to bottom: :class:`TrainingRun` sets up data, student, teacher and optimiser;
:meth:`TrainingRun.train_epoch` is the whole training loop; :func:`train` runs epochs and
calls the callbacks. Nothing here knows about Ray or MLflow.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdtune.config import TrainConfig
from kdtune.data import DataSplits, load_dataset
from kdtune.errors import KdtuneError
from kdtune.methods import get_feature_method, get_method, training_loss
from kdtune.metrics import (
    Latency,
    LatencyFn,
    count_flops,
    count_params,
    cpu_latency,
    evaluate,
)
from kdtune.models import create_model
from kdtune.resolve import resolve_config
from kdtune.teacher import (
    Teacher,
    atomic_save,
    check_compatible,
    data_spec,
    embeddings_fit,
    load_teacher,
    train_embeddings,
    view_key,
    view_logits,
)
from kdtune.teacher import train_logits as cached_teacher_logits
from kdtune.vocabulary import (
    LATENCY_FIGURES,
    LATENCY_SPREADS,
    TEACHER_LATENCY,
    TEACHER_LATENCY_SPREAD,
)

Callback = Callable[[Mapping[str, float], "TrainingRun"], None]
CHECKPOINT_FORMAT = "kdtune-run/1"


@dataclass
class TrainResult:
    """What :func:`train` returns: final metrics, per-epoch history and the student."""

    config: TrainConfig
    metrics: dict[str, float]
    history: list[dict[str, float]]
    model: nn.Module = field(repr=False)
    data_spec: dict[str, Any] = field(default_factory=dict)  # what a teacher made from it needs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise KdtuneError("device 'cuda' asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def load_data(config: TrainConfig) -> DataSplits:
    """The dataset a config asks for, split by ``split_seed``."""
    return load_dataset(config.dataset, data_root=config.data_root, download=config.download,
                        split_seed=config.split_seed, val_fraction=config.val_fraction,
                        train_per_class=config.train_per_class)


def build_student(config: TrainConfig, data: DataSplits) -> nn.Module:
    torch.manual_seed(config.seed)
    return create_model(config.model, data.num_classes, data.in_shape, **config.model_kwargs())


def probe_features(model: nn.Module, x: torch.Tensor, inputs: str) -> list[torch.Size]:
    """Shapes of what ``model.forward_features`` gives for ``inputs`` (``stages`` or
    ``embedding``) on ``x`` (eval mode, no gradient; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
    model.train(was_training)
    return [f.shape for f in (feats.stages if inputs == "stages" else [feats.embedding])]


def warmup_scale(epoch: int, kd_warmup: int) -> float:
    """``min(1, epoch / kd_warmup)`` at the 1-based ``epoch``: the weight of the distillation
    terms (CE keeps its weight); ``kd_warmup`` 0 means no warm-up (1)."""
    return min(1.0, epoch / kd_warmup) if kd_warmup > 0 else 1.0


def lr_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer
                ) -> torch.optim.lr_scheduler.LRScheduler:
    """Multistep (x0.2 at 30/60/80% of the epochs, as in D'Amicantonio 2021, "Improvements to
    Knowledge Distillation on Deep Neural Networks", MSc thesis, University of Bologna) or
    cosine, stepped per epoch."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    milestones = sorted({max(1, round(f * config.epochs)) for f in (0.3, 0.6, 0.8)})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.2)


class TrainingRun:
    """One student (or teacher) being trained; restartable from a checkpoint.

    The loss is ``alpha * CE + (1 - alpha) * logit_term + feature_weight * feature_term``
    (:func:`~kdtune.methods.training_loss` composes the first two; the feature method's
    term module, ``parts["feature"]``, gives the third). ``parts`` holds the methods' extra
    trainable modules (adapters, embedding heads): trained with the student by the same
    optimiser and schedule, saved in checkpoints, and not part of the student (its size,
    FLOPs, latency and saved model count the student alone).
    """

    def __init__(self, config: TrainConfig, *, teacher: Teacher | None = None,
                 data: DataSplits | None = None) -> None:
        config = resolve_config(config)
        self.config = config
        self.method = get_method(config.method)
        self.feature = get_feature_method(config.feature_method)
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.data = data if data is not None else load_data(config)
        self.model = build_student(config, self.data).to(self.device)
        self.teacher = self._load_teacher(teacher)
        self.augment = self.data.augment if config.augment is not False else None
        if config.augment and self.augment is None:
            raise KdtuneError(f"dataset {config.dataset!r} has no augmentation; drop --augment")
        self.parts = self._build_parts()
        self.feature_mode, self.teacher_embeddings = self._feature_source()
        self.teacher_mode, self.teacher_logits = self._teacher_source()
        channels_last = _wants_channels_last(config, self.model, self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.parts = self.parts.to(memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.x_train = self.data.x_train.to(self.device, memory_format=self.memory_format)
        self.y_train = self.data.y_train.to(self.device)
        trained = [*self.model.parameters(), *self.parts.parameters()]
        self.optimizer = torch.optim.SGD(trained, lr=config.lr,
                                         momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = lr_schedule(config, self.optimizer)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.elapsed = 0.0
        self.history: list[dict[str, float]] = []

    def _load_teacher(self, teacher: Teacher | None) -> Teacher | None:
        if teacher is None and self.config.teacher is not None:
            teacher = load_teacher(self.config.teacher)
        if teacher is None:
            if self.method.needs_teacher_model:
                raise KdtuneError(f"method {self.config.method!r} needs a teacher: pass "
                                  "--teacher PATH (make one with `kdtune teacher`)")
            if self.feature.needs_teacher:
                raise KdtuneError(f"feature method {self.config.feature_method!r} needs a "
                                  "teacher: pass --teacher PATH (make one with `kdtune "
                                  "teacher`)")
            return None
        check_compatible(teacher, data_spec(self.data, self.config.split_seed,
                                            self.config.val_fraction))
        return teacher.to(self.device)

    def _build_parts(self) -> nn.ModuleDict:
        """The methods' extra trainable modules, built for the student's and the teacher's
        feature shapes. Their initial weights come from their own seeded generator, so the
        student's initialisation and random stream are those of a run without them."""
        parts = nn.ModuleDict()
        if self.method.peers is not None:
            cfg, data = self.config, self.data
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 2)
                parts["logit"] = self.method.peers(
                    lambda: create_model(cfg.model, data.num_classes, data.in_shape,
                                         **cfg.model_kwargs()), cfg.method_params)
        inputs = self.feature.inputs
        if inputs is None or self.teacher is None:
            return parts.to(self.device)
        x = self.data.x_train[:2].to(self.device)
        student = probe_features(self.model, x, inputs)
        teacher = probe_features(self.teacher.model, x, inputs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + 1)
            parts["feature"] = self.feature.make_term(student, teacher, self.config.method_params,
                                                      len(self.data.x_train))
        return parts.to(self.device)

    def _feature_source(self) -> tuple[str, torch.Tensor | None]:
        """Where the teacher's features come from: ``none`` (no feature term), ``cached``
        (embeddings of the un-augmented training set, computed once, when the table fits
        under :data:`~kdtune.teacher.MAX_TABLE_BYTES`) or ``live`` (stage maps, augmented
        inputs: a teacher pass on the batch, which gives its logits in the same forward)."""
        if "feature" not in self.parts or self.teacher is None:
            return "none", None
        if (self.feature.inputs == "embedding" and self.augment is None
                and self.config.teacher_outputs != "live" and embeddings_fit(self.teacher,
                                                                             self.data)):
            return "cached", train_embeddings(self.teacher, self.data).to(self.device)
        return "live", None

    def _teacher_source(self) -> tuple[str, torch.Tensor | None]:
        """Where teacher logits come from: ``none``, ``cached`` (un-augmented training set),
        ``views`` (every augmentation view, computed once) or ``live`` (a forward pass).

        Cached logits serve only the exact input the student sees: un-augmented logits for
        un-augmented training, per-view logits for the view each sample was given.
        """
        if self.teacher is None or not self.method.needs_teacher_model:
            return "none", None
        wanted = self.config.teacher_outputs
        if wanted == "live" or self.feature_mode == "live":  # logits come with the features
            return "live", None
        if self.augment is None:
            return "cached", cached_teacher_logits(self.teacher, self.data).to(self.device)
        has_views = view_key(self.data, self.augment) in self.teacher.outputs
        if wanted == "cached" or has_views:
            logits = view_logits(self.teacher, self.data, self.augment)
            return "views", logits.to(self.device)
        return "live", None

    # -- the training loop -----------------------------------------------------------------
    def batches(self) -> Iterable[torch.Tensor]:
        """Shuffled index batches; a trailing partial batch is dropped when there are others."""
        n, bs = len(self.x_train), self.config.batch_size
        order = torch.randperm(n, generator=self.generator).to(self.device)
        stop = n - n % bs if n > bs else n
        return order[:stop].split(bs)

    def teacher_outputs(self, idx: torch.Tensor, x: torch.Tensor,
                        views: torch.Tensor | None) -> torch.Tensor | None:
        """Teacher logits for exactly the inputs ``x`` the student sees (``x`` is sample
        ``idx`` in view ``views``, or un-augmented when ``views`` is None)."""
        if self.teacher_mode == "none":
            return None
        if self.teacher_mode == "cached" and views is None:
            return self.teacher_logits[idx]
        if self.teacher_mode == "views" and views is not None:
            return self.teacher_logits[idx, views].float()
        assert self.teacher is not None
        with torch.no_grad(), self.autocast():
            return self.teacher.model(x).float()

    def teacher_features(self, idx: torch.Tensor, x: torch.Tensor, views: torch.Tensor | None
                         ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Teacher logits (``None`` when the method reads none) and the features the feature
        method reads, for exactly the inputs ``x`` the student sees."""
        if self.feature_mode == "cached" and views is None:
            assert self.teacher_embeddings is not None
            return self.teacher_outputs(idx, x, views), [self.teacher_embeddings[idx]]
        assert self.teacher is not None
        with torch.no_grad(), self.autocast():
            out = self.teacher.model.forward_features(x)
        feats = [out.embedding] if self.feature.inputs == "embedding" else out.stages
        logits = out.logits.float() if self.method.needs_teacher_model else None
        return logits, [f.float() for f in feats]

    def autocast(self) -> Any:
        enabled = self.device.type == "cuda" and self.config.amp
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training set; returns the epoch's metrics."""
        cfg, start = self.config, time.perf_counter()
        kd_scale = warmup_scale(self.epoch + 1, cfg.kd_warmup)
        self.model.train()
        self.parts.train()
        parts = dict(self.parts.items())
        term, peers = parts.get("feature"), parts.get("logit")
        weight = float(cfg.method_params.get("feature_weight") or 0.0)
        own = {p.name for p in self.method.params}
        logit_params = {k: v for k, v in cfg.method_params.items() if k in own}
        total, count = torch.zeros((), device=self.device), 0
        for idx in self.batches():
            x, y, views = self.x_train[idx], self.y_train[idx], None
            if self.augment is not None:
                views = self.augment.sample_views(len(idx), self.generator).to(self.device)
                x = self.augment.apply(x, views)
            if term is None:
                t_logits = self.teacher_outputs(idx, x, views)
                with self.autocast():
                    s_logits = self.forward(x)
            else:
                t_logits, t_feats = self.teacher_features(idx, x, views)
                with self.autocast():
                    s_out = self.model.forward_features(x)
                s_logits = s_out.logits
                s_feats = (s_out.stages if self.feature.inputs == "stages"
                           else [s_out.embedding])
            def logit_loss(z: torch.Tensor, target: torch.Tensor | None,
                           y: torch.Tensor = y) -> torch.Tensor:
                return training_loss(cfg.method, z.float(), target, y, alpha=cfg.alpha,
                                     temperature=cfg.temperature, params=logit_params,
                                     kd_scale=kd_scale, progress=self.epoch)

            if peers is not None:  # an online method: the peers' logits are the targets
                with self.autocast():
                    loss = peers(x, s_logits.float(), logit_loss)
            else:
                loss = logit_loss(s_logits, t_logits)
            if term is not None:
                loss = loss + (kd_scale * weight) * term(s_feats, t_feats, idx)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(idx)
            count += len(idx)
        self.scheduler.step()
        self.epoch += 1
        self.elapsed += time.perf_counter() - start
        val_acc, val_loss = evaluate(self.model, self.data.x_val.to(self.device),
                                     self.data.y_val.to(self.device))
        train_loss = (total / max(count, 1)).item()
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} at epoch {self.epoch}; "
                                     f"lower the learning rate (lr {cfg.lr:g})")
        metrics = {"epoch": self.epoch, "train_loss": train_loss, "val_accuracy": val_acc,
                   "val_loss": val_loss, "lr": self.optimizer.param_groups[0]["lr"],
                   "elapsed_s": self.elapsed, **self.parts_metrics(val_acc)}
        self.history.append(metrics)
        return metrics

    def parts_metrics(self, val_accuracy: float) -> dict[str, float]:
        """Extra validation metrics of the methods' parts (dml: ``best_peer_val_accuracy``)."""
        out: dict[str, float] = {}
        x_val, y_val = self.data.x_val.to(self.device), self.data.y_val.to(self.device)
        for part in self.parts.values():
            if hasattr(part, "metrics"):
                out.update(part.metrics(x_val, y_val, val_accuracy))
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                 "epoch": self.epoch, "elapsed": self.elapsed, "history": self.history,
                 "model": self.model.state_dict(), "parts": self.parts.state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": _plain_scheduler_state(self.scheduler),
                 "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise KdtuneError(f"not a kdtune training checkpoint (format {CHECKPOINT_FORMAT!r})")
        if state["config"] != self.config.to_dict():
            raise KdtuneError("checkpoint was written by a run with another config; "
                              "refusing to resume it")
        self.model.load_state_dict(state["model"])
        self.parts.load_state_dict(state.get("parts", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        sched = dict(state["scheduler"])
        if "milestones" in sched:
            sched["milestones"] = Counter({int(k): v for k, v in sched["milestones"].items()})
        self.scheduler.load_state_dict(sched)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epoch, self.elapsed = int(state["epoch"]), float(state["elapsed"])
        self.history = [dict(h) for h in state["history"]]

    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomically write everything needed to continue this run bit-for-bit."""
        path = Path(path)
        atomic_save(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    # -- final report ----------------------------------------------------------------------
    def cost_metrics(self, *, measure_latency: bool = True,
                     latency: LatencyFn = cpu_latency) -> dict[str, float]:
        """What the student costs (size, FLOPs, CPU latency with its spread, speedup over the
        teacher) and the teacher's size and latency: known before the first epoch.
        ``latency`` times the student (a sweep passes one that shares figures between its
        trials); every latency is timed by :func:`~kdtune.metrics.cpu_latency`'s one policy
        (one torch thread, whatever ``config.threads``), the teacher's too, so ``speedup``
        compares figures timed the same way."""
        model, in_shape = self.model, self.data.in_shape
        metrics: dict[str, float] = {"params": count_params(model),
                                     "flops": count_flops(model, in_shape)}
        if measure_latency:
            for batch_size, name in LATENCY_FIGURES.items():
                _add_latency(metrics, name, LATENCY_SPREADS[batch_size],
                             latency(model, in_shape, batch_size))
        if self.teacher is not None:
            t = self.teacher
            # the teacher is frozen (requires_grad False): count all its parameters
            metrics["teacher_params"] = sum(p.numel() for p in t.model.parameters())
            if measure_latency:
                _add_latency(metrics, TEACHER_LATENCY, TEACHER_LATENCY_SPREAD, t.latency(256))
                metrics["speedup"] = metrics[TEACHER_LATENCY] / metrics[LATENCY_FIGURES[256]]
        return metrics

    def final_metrics(self, *, measure_latency: bool = True, test: bool = True,
                      latency: LatencyFn = cpu_latency) -> dict[str, float]:
        """Validation accuracy and loss with :meth:`cost_metrics`; with ``test``, the test
        accuracy of the student and of the teacher.

        The test set is read here only, for a report: a search trial passes ``test=False``
        (model selection never sees it); a single run and a sweep's finalists read it once.
        """
        data, model = self.data, self.model
        if self.history and self.history[-1]["epoch"] == self.epoch:  # evaluated already
            val_acc, val_loss = self.history[-1]["val_accuracy"], self.history[-1]["val_loss"]
        else:
            val_acc, val_loss = evaluate(model, data.x_val.to(self.device),
                                         data.y_val.to(self.device))
        metrics: dict[str, float] = {
            "val_accuracy": val_acc, "val_loss": val_loss,
            "train_time_s": self.elapsed, "epochs": self.epoch, **self.parts_metrics(val_acc),
            **self.cost_metrics(measure_latency=measure_latency, latency=latency)}
        if test:
            metrics["test_accuracy"], _ = evaluate(model, data.x_test.to(self.device),
                                                   data.y_test.to(self.device))
            if self.teacher is not None:
                metrics["teacher_test_accuracy"] = self.teacher.test_accuracy(data)
        return metrics


def _add_latency(metrics: dict[str, float], name: str, spread: str, figure: Latency) -> None:
    """``figure`` as the metric ``name`` and its spread as ``spread`` (left out when unknown:
    a figure a sweep recorded without one)."""
    metrics[name] = figure.ms
    if math.isfinite(figure.iqr_ms):
        metrics[spread] = figure.iqr_ms


def _wants_channels_last(config: TrainConfig, model: nn.Module, device: torch.device) -> bool:
    """``channels_last`` as asked; by default for conv nets on CUDA only.

    Not by default on CPU: in torch 2.14.1 the CPU backward of a channels_last 1x1 stride-2
    convolution with few channels (4 -> 8, as in a ResNet shortcut on digits) corrupts the
    heap and kills the process. ``channels_last: true`` turns it on for CPU runs.
    """
    if config.channels_last is not None:
        return config.channels_last
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _plain_scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Scheduler state with ``Counter`` turned into a dict so ``weights_only`` loading works."""
    state = scheduler.state_dict()
    if isinstance(state.get("milestones"), Counter):
        state["milestones"] = dict(state["milestones"])
    return state


def train(config: TrainConfig, callbacks: Iterable[Callback] = (), *,
          teacher: Teacher | None = None, data: DataSplits | None = None,
          resume_from: str | Path | None = None, measure_latency: bool = True) -> TrainResult:
    """Train a student per ``config``; call each callback after every epoch.

    ``teacher``/``data`` may be passed in to share them between runs (a sweep loads them
    once); otherwise they are loaded from ``config``. ``resume_from`` continues a run from
    a checkpoint written by :meth:`TrainingRun.save_checkpoint`, giving the same numbers
    as an uninterrupted run.
    """
    run = TrainingRun(config, teacher=teacher, data=data)
    config = run.config  # resolved: the method parameters' defaults filled in
    if resume_from is not None:
        run.load_checkpoint(resume_from)
    callbacks = list(callbacks)
    while run.epoch < config.epochs:
        metrics = run.train_epoch()
        for callback in callbacks:
            callback(metrics, run)
    return TrainResult(config=config, metrics=run.final_metrics(measure_latency=measure_latency),
                       history=run.history, model=run.model,
                       data_spec=data_spec(run.data, config.split_seed, config.val_fraction))
