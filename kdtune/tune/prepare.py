"""What a sweep's trials share, prepared once on the driver (search, resume, finalize): the
data, the teacher (trained once when the space file gives its config), the teacher's outputs
on the training set, and its latency.

The teacher's logits (and embeddings, or the logits of every augmentation view) are computed
here once so that trials run no teacher; the teacher is timed here once, as trials time their
students, and its figure travels with it to every trial.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console

from kdtune.config import TrainConfig
from kdtune.report import epoch_printer
from kdtune.resolve import config_from_dict
from kdtune.tune.space import DATA_KEYS, SearchSpace, teacher_config
from kdtune.tune.stores import Store
from kdtune.tune.trainable import SweepContext, TrialSettings
from kdtune.vocabulary import TEACHER_LATENCY, TEACHER_LATENCY_SPREAD

if TYPE_CHECKING:  # torch is imported beside Ray's start (start_ray)
    from kdtune.data import DataSplits
    from kdtune.metrics import Latency
    from kdtune.teacher import Teacher


def prepare_context(space: SearchSpace, store: Store, console: Console,
                    num_samples: int, teacher: Teacher | None = None,
                    recorded: Any = None) -> SweepContext:
    """Load the data and the teacher (unless given, loaded from ``space``'s checkpoint) once
    on the driver, with the teacher's outputs. ``recorded``: the sweep's trial runs so far
    (resume, finalize), whose teacher latency is kept rather than measured again."""
    from kdtune.teacher import check_compatible, data_spec, load_teacher
    from kdtune.trainer import load_data

    data_config = config_from_dict({k: space.fixed[k] for k in DATA_KEYS if k in space.fixed})
    threads = max(1, int(space.resources.cpus))  # a trial's torch threads
    data = load_data(data_config)
    teacher_path = None
    if space.teacher is not None:
        teacher_path = space.teacher.path
        if teacher_path is None:
            from kdtune.teacher_store import find_teacher, obtain_teacher

            config = teacher_config(space)
            found = find_teacher(config, store.teachers) if store.teachers.is_dir() else None
            if found is not None:
                console.print(f"teacher: {found} (trained earlier with the same config)")
            else:
                console.print("training the teacher once on the driver ...")
            path, _, _ = obtain_teacher(config, out=store.teachers, callbacks=[epoch_printer()])
            teacher_path = str(path)
            if found is None:
                console.print(f"teacher: {path}")
        if teacher is None:
            teacher = load_teacher(teacher_path)
        check_compatible(teacher, data_spec(data, data_config.split_seed,
                                            data_config.val_fraction), source="teacher")
        _precompute_teacher_outputs(space, data, teacher, num_samples, console)
        # timed once here (kdtune's one timing policy, as trials time their students: speedup
        # compares like with like) and shipped with the teacher to every trial
        teacher.latency(256, known=_recorded_teacher_latency(recorded))
    gpus = space.resources.gpus
    overrides = {"device": "cuda" if gpus > 0 else "cpu", "threads": threads}
    settings = TrialSettings(fixed=dict(space.fixed), seeds=space.seeds,
                             teacher_path=teacher_path, overrides=overrides)
    return SweepContext(settings=settings, data=data, teacher=teacher)


def _recorded_teacher_latency(runs: Any) -> Latency | None:
    """The teacher latency (batch 256) the sweep's trials reported, with its spread, if they
    did (the first trial that reported it)."""
    from kdtune.metrics import Latency

    column, spread = f"metrics.{TEACHER_LATENCY}", f"metrics.{TEACHER_LATENCY_SPREAD}"
    if runs is None or column not in runs.columns or not runs[column].notna().any():
        return None
    row = runs[runs[column].notna()].iloc[0]
    iqr = row[spread] if spread in runs.columns else None
    return Latency(float(row[column]), float("nan") if iqr is None else float(iqr))


def _precompute_teacher_outputs(space: SearchSpace, data: DataSplits, teacher: Teacher,
                                num_samples: int, console: Console) -> None:
    """Compute the teacher's logits once, before the trials, so that they run no teacher.

    Un-augmented training: the logits of the training set, and its embeddings when a feature
    method of the sweep reads them. Augmented training: the logits of every (sample, view)
    when the sweep's trials would otherwise run more teacher passes per sample than there are
    views (and the table is not huge); else trials run it live. The view table is spread over
    the cluster's GPUs or nodes when there are (``view_table``).
    """
    from kdtune.methods import get_feature_method
    from kdtune.teacher import (
        MAX_TABLE_BYTES,
        embeddings_fit,
        train_embeddings,
        train_logits,
        view_logits,
    )

    wanted = space.fixed.get("teacher_outputs", "auto")
    augment = data.augment if space.fixed.get("augment") is not False else None
    if wanted == "live":
        return
    if augment is None:
        train_logits(teacher, data)
        if any(get_feature_method(m).inputs == "embedding" for m in _feature_methods(space)) \
                and embeddings_fit(teacher, data):
            train_embeddings(teacher, data)  # the table of the methods that read embeddings
        return
    epochs = space.scheduler.max_t or space.fixed.get("epochs") or TrainConfig().epochs
    passes = num_samples * int(epochs) * len(space.seeds)  # teacher passes per sample, at most
    table = len(data.x_train) * augment.num_views * data.num_classes * 2
    if wanted == "cached" or (passes >= augment.num_views and table <= MAX_TABLE_BYTES):
        from kdtune.tune.view_table import distributed_view_logits, plan_shards

        res = space.resources
        shards = plan_shards(augment.num_views, res.cpus, res.gpus)
        console.print(f"the teacher's logits for all {augment.num_views} augmentation views, "
                      f"once ({table / 1e6:.0f} MB, fp16)"
                      + (f", over {shards} Ray tasks" if shards > 1 else "") + " ...")
        if shards > 1:
            distributed_view_logits(teacher, data, augment, shards=shards,
                                    cpus_per_task=res.cpus, gpus=res.gpus)
        else:
            view_logits(teacher, data, augment)
    else:
        console.print(f"augmented training: trials run the teacher live ({passes} passes per "
                      f"sample at most, {augment.num_views} views, table {table / 1e6:.0f} MB)")


def _feature_methods(space: SearchSpace) -> tuple[str, ...]:
    """The feature methods a sweep's trials can use."""
    searched = next((p.choices for p in space.parameters if p.name == "feature_method"), None)
    return searched or (space.fixed.get("feature_method", "none"),)
