"""Run, resume and finish a sweep: space file -> teacher and data once -> Ray Tune -> MLflow.

The driver validates the space, trains or loads the teacher once, computes its outputs on the
training set once, and ships both with the data to every trial through Ray's object store.
Optuna proposes configs (define-by-run), ASHA stops weak trials, MLflow records everything.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

import kdtune
from kdtune.cache import cache_root
from kdtune.config import TrainConfig
from kdtune.errors import KdtuneError
from kdtune.report import epoch_printer
from kdtune.tracking import Tracker, default_store, default_tracking_uri, sqlite_path
from kdtune.tune.latency_board import board_name, end_board, seed_board
from kdtune.tune.space import (
    DATA_KEYS,
    EPOCH_METRICS,
    SearchSpace,
    expand_grid,
    grid_points,
    load_space,
    teacher_config,
)
from kdtune.tune.storage import experiment_snapshot, is_uri, location_exists
from kdtune.tune.trainable import CHECKPOINT_FILE, SweepContext, TrialSettings
from kdtune.versions import package_versions

if TYPE_CHECKING:  # torch is imported beside Ray's start (start_ray)
    from kdtune.data import DataSplits
    from kdtune.teacher import Teacher

ASHA_STATE = "kdtune-asha.json"
TAG_STORAGE, TAG_SPACE, TAG_SPACE_SHA = "kdtune.storage", "kdtune.space_file", "kdtune.space_sha256"
TAG_TEACHER_FINGERPRINT, TAG_VERSIONS = "kdtune.teacher_fingerprint", "kdtune.versions"
PARAM_NUM_SAMPLES, PARAM_SEARCHED = "num_samples", "searched"


@dataclass(frozen=True)
class Store:
    """Where a sweep's records go: the MLflow store and the Ray experiment storage."""

    tracking_uri: str
    # Ray experiments live in storage/<sweep name>: a local folder (absolute Path) or a URI
    # such as s3://bucket/path that every node of a cluster reaches.
    storage: Path | str

    @classmethod
    def resolve(cls, mlflow_uri: str | None = None, storage: str | None = None) -> Store:
        """Defaults: ``$MLFLOW_TRACKING_URI`` if set, and one local folder ``./kdtune-runs``
        with ``mlflow.db`` and ``ray/``."""
        root = default_store()
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)
        if storage and is_uri(storage):
            return cls(uri, storage.rstrip("/"))
        path = Path(storage).expanduser().resolve() if storage else root / "ray"
        return cls(uri, path)

    def experiment_dir(self, name: str) -> Path | str:
        if isinstance(self.storage, Path):
            return self.storage / name
        return f"{self.storage}/{name}"

    @property
    def teachers(self) -> Path:
        """Where the driver keeps teachers it trains (they reach trials via the object store,
        so a driver-local folder does; with a URI storage, the driver's kdtune cache)."""
        if isinstance(self.storage, Path):
            return self.storage / "_teachers"
        return cache_root() / "teachers"

    def describe(self) -> str:
        return f"MLflow {self.tracking_uri}, Ray storage {self.storage}"


# -- the pieces -------------------------------------------------------------------------------
def prepare_context(space: SearchSpace, store: Store, console: Console,
                    num_samples: int) -> SweepContext:
    """Load the data and the teacher once on the driver, with the teacher's outputs."""
    from kdtune.teacher import check_compatible, data_spec, load_teacher
    from kdtune.trainer import load_data

    data_config = TrainConfig.from_dict({k: space.fixed[k] for k in DATA_KEYS if k in space.fixed})
    data = load_data(data_config)
    teacher, teacher_path = None, None
    if space.teacher is not None:
        teacher_path = space.teacher.path
        if teacher_path is None:
            console.print("training the teacher once on the driver ...")
            from kdtune.teacher_store import obtain_teacher

            path, _, reused = obtain_teacher(teacher_config(space), out=store.teachers,
                                             callbacks=[epoch_printer()])
            teacher_path = str(path)
            console.print(f"teacher: {path}" + (" (reused: same config)" if reused else ""))
        teacher = load_teacher(teacher_path)
        check_compatible(teacher, data_spec(data, data_config.split_seed,
                                            data_config.val_fraction), source="teacher")
        _precompute_teacher_outputs(space, data, teacher, num_samples, console)
        teacher.latency_ms(256)  # measured once here; ships with the teacher to every trial
    gpus = space.resources.gpus
    overrides = {"device": "cuda" if gpus > 0 else "cpu",
                 "threads": max(1, int(space.resources.cpus))}
    settings = TrialSettings(fixed=dict(space.fixed), seeds=space.seeds,
                             teacher_path=teacher_path, overrides=overrides)
    return SweepContext(settings=settings, data=data, teacher=teacher)


#: Largest per-view logit table a sweep computes and ships to every trial (fp16 bytes).
MAX_VIEW_TABLE_BYTES = 2 * 1024**3


def _precompute_teacher_outputs(space: SearchSpace, data: DataSplits, teacher: Teacher,
                                num_samples: int, console: Console) -> None:
    """Compute the teacher's logits once, before the trials, so that they run no teacher.

    Un-augmented training: the logits of the training set. Augmented training: the logits of
    every (sample, view) when the sweep's trials would otherwise run more teacher passes per
    sample than there are views (and the table is not huge); else trials run it live. The
    view table is spread over the cluster's GPUs or nodes when there are (``view_table``).
    """
    from kdtune.teacher import train_logits, view_logits

    wanted = space.fixed.get("teacher_outputs", "auto")
    augment = data.augment if space.fixed.get("augment") is not False else None
    if wanted == "live":
        return
    if augment is None:
        train_logits(teacher, data)
        return
    epochs = space.scheduler.max_t or space.fixed.get("epochs") or TrainConfig().epochs
    passes = num_samples * int(epochs) * len(space.seeds)  # teacher passes per sample, at most
    table = len(data.x_train) * augment.num_views * data.num_classes * 2
    if wanted == "cached" or (passes >= augment.num_views and table <= MAX_VIEW_TABLE_BYTES):
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


def make_search_alg(space: SearchSpace, num_samples: int) -> Any:
    """Optuna (TPE, random, NSGA-II) define-by-run; a grid is kdtune's own expansion of the
    conditional space, asked through the same searcher (every parameter given)."""
    import optuna

    from kdtune.tune.searcher import LiveTrialsLimiter, PruningOptunaSearch
    from kdtune.tune.space import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = space.search.seed
    sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed),
               "grid": lambda: optuna.samplers.RandomSampler(seed=seed),  # never samples
               "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed)}[space.search.sampler]()
    points = grid_points(space, num_samples) if space.search.sampler == "grid" else None
    metric: Any = space.metrics if space.multi_objective else space.metrics[0]
    mode: Any = space.modes if space.multi_objective else space.modes[0]
    searcher = PruningOptunaSearch(space=functools.partial(suggest, space=space),
                                   metric=metric, mode=mode, sampler=sampler, seed=seed,
                                   num_samples=num_samples, points=points)
    return LiveTrialsLimiter(searcher, max_concurrent=space.search.max_concurrent)


def make_scheduler(space: SearchSpace, experiment_dir: Path | str) -> Any:
    """ASHA on ``scheduler.metric`` (default: the first objective; rungs persisted for
    resume), or FIFO."""
    from ray.tune.schedulers import FIFOScheduler

    from kdtune.tune.scheduler import PersistentASHA

    s = space.scheduler
    if s.type == "none":
        return FIFOScheduler()
    return PersistentASHA(time_attr="epoch", metric=s.metric, mode=s.mode,
                          max_t=s.max_t, grace_period=s.grace_period,
                          reduction_factor=s.reduction_factor,
                          state_path=f"{experiment_dir}/{ASHA_STATE}")


def make_trainable(space: SearchSpace, context: SweepContext) -> Any:
    from ray import tune

    from kdtune.tune.trainable import run_trial

    resources = {"cpu": space.resources.cpus, "gpu": space.resources.gpus}
    return tune.with_resources(tune.with_parameters(run_trial, context=context), resources)


def import_training_stack() -> None:
    """Import torch and kdtune's trainer: seconds of CPU, spent beside Ray's start-up (this
    module leaves them out of its own imports for that; the test suite checks it)."""
    import importlib

    for module in ("kdtune.teacher", "kdtune.trainer"):
        importlib.import_module(module)


def start_ray(address: str | None, console: Console) -> None:
    """:func:`init_ray`, with torch and the trainer imported in a thread meanwhile
    (``ray.init`` mostly waits for Ray's processes)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        importing = pool.submit(import_training_stack)
        init_ray(address, console)
        importing.result()


def init_ray(address: str | None, console: Console) -> None:
    """Join the cluster at ``address``, or start a local Ray (unless one is running here)."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # small experiment state: save often
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # kdtune keeps one checkpoint per trial, which forces a (tiny) snapshot each epoch: wanted.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's default loggers add TensorBoard files written on every result (~8 ms each, while
    # the trial waits); kdtune names the two it keeps (result.json, progress.csv) itself.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False,
                              "logging_level": "WARNING"}
    if address:
        kwargs["runtime_env"] = {"py_modules": [str(Path(kdtune.__file__).parent)]}
        console.print(f"joining the Ray cluster at {address}")
        ray.init(address=address, **kwargs)
    else:
        # "local": never join a cluster that `ray start` left on this machine (ray.init()
        # with no address would, via /tmp/ray/ray_current_cluster or RAY_ADDRESS)
        console.print("starting a local Ray")
        logging.getLogger(_RAY_AUTH_LOGGER).addFilter(_hide_token_auth_notice)
        # Ray prestarts a worker per CPU for the driver's tasks, but Tune's trial actors carry
        # a runtime env (Tune's env_vars) and never use them: Ray starts new workers for the
        # trials and kills the idle ones, seconds of CPU taken from the start-up.
        ray.init(address="local", _system_config={"prestart_worker_first_driver": False},
                 **kwargs)


_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _hide_token_auth_notice(record: logging.LogRecord) -> bool:
    """Ray 2.60 warns on every local start that token authentication is on, its default:
    nothing for a kdtune user to act on. Its other messages (auth off, missing token) pass."""
    return "Token authentication is enabled" not in record.getMessage()


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(kdtune.__file__).parent, timeout=5, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- commands ---------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    finished: bool
    tracking_uri: str
    experiment_dir: Path | str


def run_sweep(space_file: str, *, name: str | None = None, address: str | None = None,
              mlflow_uri: str | None = None, storage: str | None = None,
              num_samples: int | None = None, console: Console | None = None) -> SweepOutcome:
    """Start a new sweep; every input is validated before Ray starts."""
    console = console or Console(highlight=False)
    space = load_space(space_file)
    num_samples = _num_samples(space, num_samples)
    store = Store.resolve(mlflow_uri, storage)
    tracker = Tracker(store.tracking_uri)
    db = sqlite_path(store.tracking_uri)
    new_store = db is not None and not db.exists()  # holds no sweep this one could clash with
    if name is None:  # the file's name, or the next free name-2, name-3, ... after it
        name = _free_name(space.name, store, set() if new_store else set(tracker.sweep_names()))
    experiment_dir = store.experiment_dir(name)
    if location_exists(experiment_dir):
        raise KdtuneError(f"Ray storage {experiment_dir} already exists; resume with `kdtune "
                          f"resume {name}` or choose another --name")
    console.print(f"sweep {name!r}: {num_samples} trials; {store.describe()}")
    from concurrent.futures import ThreadPoolExecutor

    # Opening the store (importing MLflow; for a new SQLite store, creating it) runs in a
    # thread beside Ray's start-up and, for a new store, beside loading the data and training
    # the teacher too; the main thread uses the tracker only once it is open.
    with ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(tracker.ensure_experiment)
        start_ray(address, console)
        if not new_store:
            opening.result()
            _check_name_free(tracker, name, store)
        context = prepare_context(space, store, console, num_samples)
        opening.result()
    parent = tracker.start_sweep(name, tags={
        TAG_SPACE: space.source, TAG_SPACE_SHA: space.sha256, TAG_STORAGE: str(experiment_dir),
        "kdtune.version": kdtune.__version__, "kdtune.git_sha": git_sha(),
        "kdtune.ray_address": address or "local", TAG_VERSIONS: json.dumps(package_versions()),
        **({TAG_TEACHER_FINGERPRINT: context.teacher.fingerprint} if context.teacher else {})},
        params={"objective.metrics": ",".join(space.metrics),
                "objective.modes": ",".join(space.modes), PARAM_NUM_SAMPLES: num_samples,
                "sampler": space.search.sampler, "scheduler": space.scheduler.type,
                PARAM_SEARCHED: ",".join(p.name for p in space.parameters),
                "teacher": context.settings.teacher_path})
    tracker.log_artifact(parent, space.source)
    context.latency_board = board_name(parent)
    _allow_final_only_metrics(space)
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from kdtune.tune.callbacks import MlflowTrials, Progress

    tuner = tune.Tuner(
        make_trainable(space, context),
        tune_config=tune.TuneConfig(search_alg=make_search_alg(space, num_samples),
                                    scheduler=make_scheduler(space, experiment_dir),
                                    num_samples=num_samples,
                                    # both search algorithms carry the limit themselves
                                    max_concurrent_trials=None,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=str(store.storage), verbose=0,
            callbacks=[MlflowTrials(tracker, parent, name, context.settings),
                       Progress(space.metrics[0], space.modes[0]),
                       JsonLoggerCallback(), CSVLoggerCallback()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0)))
    return _fit_and_finish(tuner, space, store, tracker, parent, name, num_samples, console)


def resume_sweep(name: str, *, address: str | None = None, mlflow_uri: str | None = None,
                 storage: str | None = None, console: Console | None = None) -> SweepOutcome:
    """Finish an interrupted sweep: finished trials stay, unfinished ones continue."""
    console = console or Console(highlight=False)
    store = Store.resolve(mlflow_uri, storage)
    from kdtune.tracking import require_store

    require_store(store.tracking_uri)
    tracker = Tracker(store.tracking_uri)
    run = tracker.sweep_run(name)
    tags, params = run.data.tags, run.data.params
    experiment_dir = store.experiment_dir(name) if storage else tags[TAG_STORAGE]
    if not is_uri(experiment_dir):
        experiment_dir = Path(experiment_dir)
    outcome = SweepOutcome(name, run.info.run_id, True, store.tracking_uri, experiment_dir)
    if run.info.status == "FINISHED":
        console.print(f"sweep {name!r} already finished; nothing to resume "
                      f"(see `kdtune best {name}`)")
        return outcome
    from ray import tune

    if not tune.Tuner.can_restore(str(experiment_dir)):
        raise KdtuneError(f"no Ray experiment state for {name!r} at {experiment_dir}; pass "
                          "--storage with the folder the sweep was started with")
    space = load_space(tags[TAG_SPACE])
    if space.sha256 != tags[TAG_SPACE_SHA]:
        raise KdtuneError(f"{space.source} changed since sweep {name!r} started (sha256 "
                          f"{tags[TAG_SPACE_SHA][:12]} -> {space.sha256[:12]}); restore it")
    num_samples = int(params[PARAM_NUM_SAMPLES])
    console.print(f"resuming sweep {name!r}; {store.describe()}")
    start_ray(address, console)  # before the context: its view table may use the cluster
    context = prepare_context(space, store, console, num_samples)
    runs = tracker.trial_runs(name)
    context.latency_board = board_name(run.info.run_id)
    seed_board(context.latency_board, runs, context.data)
    context.ended = _ended_trials(runs)
    _allow_final_only_metrics(space)
    repaired = _repair_checkpoints(experiment_dir)
    if repaired:
        console.print(f"{repaired} trial(s) continue from the checkpoint after the one Ray's "
                      "last snapshot names (deleted just before the crash)")
    tuner = tune.Tuner.restore(str(experiment_dir), trainable=make_trainable(space, context),
                               resume_unfinished=True, resume_errored=False,
                               restart_errored=False)
    return _fit_and_finish(tuner, space, store, tracker, run.info.run_id, name, num_samples,
                           console)


def _repair_checkpoints(experiment_dir: Path | str) -> int:
    """Point restored trials at a checkpoint that exists; return how many needed it.

    kdtune keeps one checkpoint per trial (``num_to_keep=1``). Ray deletes the previous
    checkpoint as soon as it registers a new one, but writes the experiment snapshot that
    names the new one only later (at the next step of its loop, then copied to storage), so a
    driver killed in between leaves a snapshot naming a deleted checkpoint, and Ray's restore
    fails that trial ("Could not recover from checkpoint as it does not exist on storage
    anymore"). The trial folder then holds the next checkpoint(s); the oldest of them is the
    one Ray had registered (its epoch is in MLflow), so it is copied to the name the snapshot
    expects and the trial continues from there (kdtune's trainable counts epochs itself).
    Local storage only: on a URI storage (s3://...) such a trial restarts as Ray decides.
    """
    if is_uri(experiment_dir):
        return 0
    experiment_dir = Path(experiment_dir)
    import re
    import shutil

    from ray.tune.trainable.metadata import _TrainingRunMetadata

    repaired = 0
    for _, metadata in experiment_snapshot(experiment_dir):
        manager = _TrainingRunMetadata.from_json_state(metadata).checkpoint_manager
        latest = manager.latest_checkpoint_result if manager is not None else None
        if latest is None or latest.checkpoint is None:
            continue
        named = Path(latest.checkpoint.path)
        expected = experiment_dir / named.parent.name / named.name
        index = re.fullmatch(r"checkpoint_(\d+)", expected.name)
        if expected.exists() or index is None or not expected.parent.is_dir():
            continue
        newer = sorted((int(m[1]), p) for p in expected.parent.glob("checkpoint_*")
                       if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)) and p.is_dir()
                       and int(m[1]) > int(index[1]))
        if newer:
            shutil.copytree(newer[0][1], expected)
            repaired += 1
    return repaired


def _allow_final_only_metrics(space: SearchSpace) -> None:
    """Objectives such as ``params`` or latency exist only in a trial's last result.

    Ray checks that every result carries every metric the searcher optimises and fails the
    sweep at the first epoch otherwise; the searcher reads them only when a trial ends, and
    ASHA's metric is always one reported every epoch (space validation), so the check is off.
    """
    if any(m not in EPOCH_METRICS for m in space.metrics):
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"


def _ended_trials(runs: Any) -> frozenset[str]:
    """Trials whose MLflow record (``Tracker.trial_runs``) is complete: a restored one only
    replays its last epoch."""
    from kdtune.tune.callbacks import ENDED

    if runs.empty:
        return frozenset()
    return frozenset(str(t) for t in runs.loc[runs["status"].isin(ENDED), "trial_id"])


def _check_name_free(tracker: Tracker, name: str, store: Store) -> None:
    if tracker.find_sweep(name) is not None:
        raise KdtuneError(f"sweep {name!r} already exists in {store.tracking_uri}; resume it "
                          f"with `kdtune resume {name}` or choose another --name")


def _free_name(base: str, store: Store, known: set[str]) -> str:
    """``base`` if no sweep (``known``, or a Ray experiment folder) has it yet, else the first
    free ``base-2``, ``base-3``, ..."""
    name, k = base, 1
    while name in known or location_exists(store.experiment_dir(name)):
        k += 1
        name = f"{base}-{k}"
    return name


def _num_samples(space: SearchSpace, override: int | None) -> int:
    if space.search.sampler == "grid":
        size = len(expand_grid(space))
        n = override or space.search.num_samples or size
        if n > size:
            raise KdtuneError(f"--num-samples {n} is more than the grid's {size} configurations")
        return n
    n = override or space.search.num_samples
    if n is None or n < 1:
        raise KdtuneError(f"num_samples {n} must be >= 1 (--num-samples or search.num_samples)")
    return n


def _fit_and_finish(tuner: Any, space: SearchSpace, store: Store, tracker: Tracker, parent: str,
                    name: str, num_samples: int, console: Console) -> SweepOutcome:
    try:
        results = tuner.fit()
    finally:
        end_board(board_name(parent))
    finished = _all_ended(results, num_samples)
    removed = _drop_orphans(tracker, name, results)
    if removed:
        console.print(f"removed {removed} MLflow child run(s) of trials Ray never recorded")
    experiment_dir = store.experiment_dir(name)
    if finished:
        _log_best_student(tracker, space, name, results, console)
        tracker.end_sweep(parent, "FINISHED")
        console.print(f"sweep {name!r} finished: {len(results)} trials")
    else:
        console.print(f"sweep {name!r} stopped before the end; continue with "
                      f"`kdtune resume {name}`")
    return SweepOutcome(name, parent, finished, store.tracking_uri, experiment_dir)


def _all_ended(results: Any, num_samples: int) -> bool:
    """Every trial of the sweep exists and ended (finished, stopped early or failed)."""
    from kdtune.tune.searcher import stopped_early

    if len(results) < num_samples:
        return False
    for r in results:
        if r.error is None and not r.metrics.get("done", False) and not stopped_early(r.metrics):
            return False
    return True


def _drop_orphans(tracker: Tracker, name: str, results: Any) -> int:
    """Delete child runs of trials that Ray does not know (started just before a crash)."""
    known = {Path(r.path).name for r in results}
    runs = tracker.trial_runs(name)
    removed = 0
    for _, row in runs.iterrows():
        if not any(str(row["trial_id"]) in folder for folder in known):
            tracker.client.delete_run(row["run_id"])
            removed += 1
    return removed


def _log_best_student(tracker: Tracker, space: SearchSpace, name: str, results: Any,
                      console: Console) -> None:
    """Attach the best finished trial's student weights to its MLflow run."""
    import torch

    from kdtune.teacher import atomic_save

    best = tracker.best_configs(name, metrics=space.metrics[:1], modes=space.modes[:1], top=1)
    if best.empty:
        return
    row = best.iloc[0]
    match = [r for r in results if str(row["trial_id"]) in Path(r.path).name]
    if not match or match[0].checkpoint is None:
        return
    with match[0].checkpoint.as_directory() as folder, \
            tempfile.TemporaryDirectory() as out:
        seeds = sorted(Path(folder).glob(CHECKPOINT_FILE.format(seed="*")))
        state = torch.load(seeds[0], map_location="cpu", weights_only=True)
        student = Path(out) / "student.pt"
        atomic_save({"format": "kdtune-student/1", "config": state["config"],
                     "state_dict": state["model"]}, student)
        tracker.log_artifact(str(row["run_id"]), student)
    console.print(f"best student's weights logged to MLflow run {row['run_id']}")
