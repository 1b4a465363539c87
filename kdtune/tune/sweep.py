"""Run, resume and extend a sweep: space file -> teacher and data once -> Ray Tune -> MLflow.

The driver validates the space, trains or loads the teacher once, computes its outputs on the
training set once, and ships both with the data to every trial through Ray's object store.
The search state is an Optuna study (:mod:`.study`): the searcher asks and tells it, the
scheduler keeps its rungs in it, and a sweep is resumed or extended by reopening it. Ray Tune
runs the trials and keeps their checkpoints, one Ray experiment per run of the driver that
adds trials ("segments": the first in ``<storage>/<name>``, later ones in
``<storage>/<name>/extend-<k>``). MLflow records everything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

import kdtune
from kdtune.cache import cache_root
from kdtune.config import TrainConfig
from kdtune.errors import Interrupted, KdtuneError
from kdtune.report import epoch_printer
from kdtune.tracking import (
    Tracker,
    default_store,
    default_tracking_uri,
    sqlite_path,
    transient_tracking_error,
)
from kdtune.tune.latency_board import end_board, seed_board, start_board
from kdtune.tune.space import (
    DATA_KEYS,
    SearchSpace,
    expand_grid,
    load_space,
    optuna_params,
    params_in_space,
    teacher_config,
)
from kdtune.tune.study import (
    ATTR_NUM_SAMPLES,
    ATTR_RAY_ID,
    ATTR_REASKED,
    ATTR_SEED,
    ATTR_SPACE,
    ATTR_SPACE_SHA,
    DriverLock,
    SweepBusy,
    SweepStudy,
    default_study_url,
    is_server,
    study_of_sweep,
)
from kdtune.tune.trainable import CHECKPOINT_FILE, SweepContext, TrialSettings
from kdtune.urls import (
    call_with_retries,
    check_reachable,
    check_store_flags,
    redact,
)
from kdtune.versions import git_sha, package_versions
from kdtune.vocabulary import (
    PARAM_OBJECTIVE_METRICS,
    PARAM_OBJECTIVE_MODES,
    PARAM_SAMPLER_SEED,
    PARAM_SEARCHED,
    PARAM_TEACHER,
    RUNG_METRICS,
    TAG_ERROR,
    TAG_GIT_SHA,
    TAG_NUM_SAMPLES,
    TAG_RAY_ADDRESS,
    TAG_SPACE,
    TAG_SPACE_SHA,
    TAG_STORAGE,
    TAG_STUDY,
    TAG_TEACHER_FINGERPRINT,
    TAG_VERSION,
    TAG_VERSIONS,
    TEACHER_LATENCY,
    TEACHER_LATENCY_SPREAD,
)

if TYPE_CHECKING:  # torch is imported beside Ray's start (start_ray)
    from kdtune.data import DataSplits
    from kdtune.metrics import Latency
    from kdtune.teacher import Teacher

#: Study attribute: the sweep's Ray experiments (segments), relative to its first one.
ATTR_SEGMENTS = "segments"


@dataclass(frozen=True)
class Store:
    """Where a sweep's records go: the MLflow store, the Ray storage and the study storage."""

    tracking_uri: str
    # Ray experiments live in storage/<sweep name>: a local folder (absolute Path) or a URI
    # such as s3://bucket/path that every node of a cluster reaches.
    storage: Path | str
    study_url: str

    @classmethod
    def resolve(cls, mlflow_uri: str | None = None, storage: str | None = None,
                study_storage: str | None = None) -> Store:
        """Defaults: ``$MLFLOW_TRACKING_URI`` if set, and one local folder ``./kdtune-runs``
        with ``mlflow.db``, ``optuna.db`` and ``ray/``. The study's default is ``optuna.db``
        beside an SQLite MLflow store, else in a local Ray storage folder, else in
        ``./kdtune-runs``."""
        root = default_store()
        check_store_flags(mlflow_uri, storage, study_storage)
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)
        if storage and is_uri(storage):
            ray_storage: Path | str = storage.rstrip("/")
        else:
            ray_storage = Path(storage).expanduser().resolve() if storage else root / "ray"
        # the study goes beside an SQLite MLflow store, else into a local Ray storage folder
        db = sqlite_path(uri)
        folder = db.parent if db is not None else \
            ray_storage if isinstance(ray_storage, Path) else root
        return cls(uri, ray_storage, study_storage or default_study_url(folder))

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
        return (f"MLflow {redact(self.tracking_uri)}, Ray storage {redact(str(self.storage))}, "
                f"Optuna study storage {redact(self.study_url)}")

    def check_servers(self) -> None:
        """A one-line error, before Ray starts, when the MLflow server or the study's database
        server does not answer (SQLite files and journal files are opened later)."""
        if self.tracking_uri.startswith(("http://", "https://")):
            check_reachable(self.tracking_uri, "the MLflow tracking server")
        if is_server(self.study_url):
            SweepStudy(self.study_url, "").exists()  # connects: a refused connection is one line

    @property
    def logs(self) -> Path:
        """Where the driver writes Ray Tune's own log records (not shown on the terminal)."""
        if isinstance(self.storage, Path):
            return self.storage / "_logs"
        return cache_root() / "logs"


# -- the pieces -------------------------------------------------------------------------------
def prepare_context(space: SearchSpace, store: Store, console: Console,
                    num_samples: int, teacher: Teacher | None = None,
                    recorded: Any = None) -> SweepContext:
    """Load the data and the teacher (unless given, loaded from ``space``'s checkpoint) once
    on the driver, with the teacher's outputs. ``recorded``: the sweep's trial runs so far
    (resume, finalize), whose teacher latency is kept rather than measured again."""
    from kdtune.teacher import check_compatible, data_spec, load_teacher
    from kdtune.trainer import load_data

    data_config = TrainConfig.from_dict({k: space.fixed[k] for k in DATA_KEYS if k in space.fixed})
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


def rung_objectives(space: SearchSpace) -> tuple[list[str], list[str]]:
    """What early stopping compares at a rung: the scheduler's per-epoch metric, and with
    several objectives also the cost objectives (known from the first epoch on)."""
    s = space.scheduler
    assert s.metric is not None and s.mode is not None
    costs = [o for o in space.objectives if o.metric not in RUNG_METRICS]
    if not space.multi_objective:
        costs = []
    return [s.metric, *(o.metric for o in costs)], [s.mode, *(o.mode for o in costs)]


def make_scheduler(space: SearchSpace, study: SweepStudy) -> Any:
    """ASHA (MO-ASHA for several objectives) with its rungs in the study, or FIFO."""
    from ray.tune.schedulers import FIFOScheduler

    from kdtune.tune.scheduler import RungScheduler

    s = space.scheduler
    if s.type == "none":
        return FIFOScheduler()
    assert s.grace_period is not None and s.reduction_factor is not None and s.max_t is not None
    metrics, modes = rung_objectives(space)
    return RungScheduler(study, metrics=metrics, modes=modes, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, max_t=s.max_t)


def make_trainable(space: SearchSpace, context: SweepContext) -> Any:
    from ray import tune

    from kdtune.tune.trainable import run_trial

    resources = {"cpu": space.resources.cpus, "gpu": space.resources.gpus}
    return tune.with_resources(tune.with_parameters(run_trial, context=context), resources)


def trial_dirname(trial: Any) -> str:
    """A trial's folder in its Ray experiment: named by its trial id alone."""
    return trial_dirname_of(trial.trial_id)


def start_ray(address: str | None, console: Console) -> None:
    """:func:`init_ray`, with torch and kdtune's trainer imported in a thread meanwhile: seconds
    of CPU spent while ``ray.init`` waits for Ray's processes (this module leaves them out of
    its own imports for that; the test suite checks it)."""
    import importlib
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        importing = pool.map(importlib.import_module, ("kdtune.teacher", "kdtune.trainer"))
        init_ray(address, console)
        list(importing)


def init_ray(address: str | None, console: Console) -> None:
    """Join the cluster at ``address``, or start a local Ray (unless one is running here)."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # small experiment state: save often
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # kdtune keeps one checkpoint per trial, which forces a (tiny) snapshot each epoch: wanted.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's default loggers add TensorBoard files written on every result (~8 ms each, while
    # the trial waits); kdtune names the two it keeps (result.json, progress.csv) itself.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # a trial's traceback goes to its log and MLflow, not the terminal; Ctrl-C is kdtune's
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # a trial that fails by itself reports its failure, not the objective
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
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
        for handler in logging.getLogger("ray").handlers:  # where Ray's records are printed
            handler.addFilter(_hide_token_auth_notice)
        ray.init(address="local", **kwargs)


def _hide_token_auth_notice(record: logging.LogRecord) -> bool:
    """Ray 2.60 warns on every local start that token authentication is on, its default:
    nothing for a kdtune user to act on. Its other messages (auth off, missing token) pass."""
    return "Token authentication is enabled" not in record.getMessage()


# -- commands ---------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    finished: bool
    tracking_uri: str
    experiment_dir: Path | str
    #: Why the sweep failed as a whole (every trial failed): one line; None otherwise.
    failure: str | None = None


@dataclass
class _Sweep:
    """Everything the driver holds while it runs a sweep's trials."""

    name: str
    space: SearchSpace
    store: Store
    tracker: Tracker
    study: SweepStudy
    parent: str
    context: SweepContext
    base_dir: Path | str  # the first segment's Ray experiment folder
    console: Console

    def segment_dir(self, segment: str) -> Path | str:
        if not segment:
            return self.base_dir
        return self.base_dir / segment if isinstance(self.base_dir, Path) \
            else f"{self.base_dir}/{segment}"


def run_sweep(space_file: str, *, name: str | None = None, address: str | None = None,
              mlflow_uri: str | None = None, storage: str | None = None,
              study_storage: str | None = None, num_samples: int | None = None,
              console: Console | None = None) -> SweepOutcome:
    """Start a new sweep; every input is validated before Ray starts.

    The sweep is registered (its name claimed under a :class:`DriverLock`, its study and its
    parent MLflow run created) once Ray runs, the cluster can run its trials and the data and
    the teacher are ready: from then on ``kdtune resume`` continues it, whenever the driver
    stops; an error before (bad input of any kind) leaves nothing registered."""
    console = console or Console(highlight=False, soft_wrap=True)  # a line stays one line
    space = load_space(space_file)
    num_samples = _num_samples(space, num_samples)
    teacher = None
    if space.teacher is not None and space.teacher.path is not None:
        from kdtune.teacher import load_teacher

        teacher = load_teacher(space.teacher.path)  # weights only: a bad file is one line
    store = Store.resolve(mlflow_uri, storage, study_storage)
    store.check_servers()
    tracker = Tracker(store.tracking_uri)
    db = sqlite_path(store.tracking_uri)
    new_store = db is not None and not db.exists()  # holds no sweep this one could clash with
    if name is not None and location_exists(store.experiment_dir(name)):
        raise _folder_taken(name, store)
    from concurrent.futures import ThreadPoolExecutor

    with Interrupts() as interrupts:
        with _removed_if_refused(store, tracker):
            # Opening the stores (importing MLflow and Optuna; for a new SQLite store, creating
            # it) runs in a thread beside Ray's start-up; the main thread uses them once open.
            with ThreadPoolExecutor(max_workers=1) as pool:
                opening = pool.submit(lambda: (tracker.ensure_experiment(),
                                               SweepStudy(store.study_url, "").exists()))
                if space.search.warm_start is not None or not new_store:
                    opening.result()
                    if name is not None:
                        _check_name_free(tracker, SweepStudy(store.study_url, name), name,
                                         store)
                warm = warm_start_configs(space, tracker, console)
                start_ray(address, console)
                check_resources(space, console)
                context = prepare_context(space, store, console, num_samples, teacher)
                opening.result()
            name, study, parent, lock, running = _register(space, store, tracker, name,
                                                           num_samples, warm, address, context)
        interrupts.hint = f"continue with `kdtune resume {name}`"
        try:
            console.print(f"sweep {name!r}: {num_samples} trials; {store.describe()}")
            if running:
                console.print(f"sampler seed {study.attrs[ATTR_SEED]} (search.seed "
                              f"{space.search.seed} + {running}: {running} other sweep(s) of "
                              "this file run now)")
            experiment_dir = store.experiment_dir(name)
            tracker.log_artifact(parent, space.source)
            context.latency_board = start_board()
            sweep = _Sweep(name, space, store, tracker, study, parent, context, experiment_dir,
                           console)
            return _run_segments(sweep, _new_tuner(sweep, "", num_samples), interrupts,
                                 "search")
        finally:
            lock.release()


@contextlib.contextmanager
def _removed_if_refused(store: Store, tracker: Tracker) -> Iterator[None]:
    """A start refused before its sweep is registered leaves nothing: the local store files
    and folders it created (the SQLite databases with their lock files, the store folder, the
    Ray storage folder) are removed again -- unless another driver registered a sweep in
    them meanwhile."""
    local = [p for p in (sqlite_path(store.tracking_uri), sqlite_path(store.study_url))
             if p is not None]
    candidates = [*local, *(p.with_name(f".{p.name}.lock") for p in local),
                  *(p.parent for p in local)]
    if isinstance(store.storage, Path):
        candidates.append(store.storage)
    new = [p for p in dict.fromkeys(candidates) if not p.exists()]
    try:
        yield
    except BaseException:
        if new and not _holds_a_sweep(store, tracker):
            import shutil

            for path in new:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


def _holds_a_sweep(store: Store, tracker: Tracker) -> bool:
    """Whether the MLflow store or the study storage holds any sweep now."""
    try:
        return bool(tracker.sweep_names()) or bool(
            SweepStudy(store.study_url, "").storage.get_all_studies())
    except Exception:  # a store that cannot be read: leave it as it is
        return True


def _register(space: SearchSpace, store: Store, tracker: Tracker, name: str | None,
              num_samples: int, warm: list[dict[str, Any]], address: str | None,
              context: SweepContext) -> tuple[str, SweepStudy, str, DriverLock, int]:
    """Claim the sweep's name and create its study and parent run; return them with the
    driver lock held, and how many other drivers of this file run at once (see below).

    Without ``name``: the space's name or the next free ``name-2``, ... (two drivers started
    at once get two names); a name is free when no sweep has it, no Ray experiment folder has
    it and no live driver holds its lock. A study of that name left without a parent run (its
    driver was killed while registering it) is replaced.

    The sampler's seed is ``search.seed``, plus ``k`` when the ``k`` names before this one are
    being run by live drivers at this moment (the same file searched twice at once must not
    train the same configurations twice); a sweep of the file run again later keeps the seed.
    A grid is refused then: a second grid sweep at once would train the same grid."""
    from kdtune.tune.searcher import search_attrs

    base = name or space.name
    known = set(tracker.sweep_names())
    running = 0  # names before this one whose driver runs now
    def another_runs(candidate: str) -> None:
        nonlocal running
        if space.search.sampler == "grid":
            raise KdtuneError(f"a grid sweep of {space.source} runs now as {candidate!r}; a "
                              "second one at the same time would train the same grid: wait "
                              "for it to end")
        running += 1

    for candidate in [name] if name else [base, *(f"{base}-{k}" for k in range(2, 10_000))]:
        study = SweepStudy(store.study_url, candidate)
        lock = DriverLock(study)
        if name is None and (candidate in known or
                             location_exists(store.experiment_dir(candidate))):
            if lock.held():
                another_runs(candidate)
            continue
        try:
            lock.acquire()
        except SweepBusy:
            if name is not None:
                raise
            another_runs(candidate)
            continue
        try:
            if tracker.find_sweep(candidate) is not None:  # registered by a driver now gone
                if name is not None:
                    raise _name_taken(candidate, store)
                lock.release()
                continue
            if name is not None and location_exists(store.experiment_dir(name)):
                raise _folder_taken(name, store)  # made meanwhile by a driver of other stores
            if study.exists():
                study.delete()
            attrs = search_attrs(space, num_samples)
            attrs[ATTR_SEED] += running
            study.create(space.modes, {**attrs, ATTR_SEGMENTS: [""]})
            for config in warm:
                study.study.enqueue_trial(optuna_params(config))
            parent = tracker.start_sweep(candidate, tags={
                TAG_SPACE: space.source, TAG_SPACE_SHA: space.sha256,
                TAG_STORAGE: redact(str(store.experiment_dir(candidate))),
                TAG_STUDY: redact(store.study_url), TAG_NUM_SAMPLES: num_samples,
                TAG_VERSION: kdtune.__version__, TAG_GIT_SHA: git_sha(),
                TAG_RAY_ADDRESS: address or "local",
                TAG_VERSIONS: json.dumps(package_versions()),
                **({TAG_TEACHER_FINGERPRINT: context.teacher.fingerprint}
                   if context.teacher else {})},
                params={PARAM_OBJECTIVE_METRICS: ",".join(space.metrics),
                        PARAM_OBJECTIVE_MODES: ",".join(space.modes),
                        "sampler": space.search.sampler, "scheduler": space.scheduler.type,
                        PARAM_SAMPLER_SEED: attrs[ATTR_SEED],
                        PARAM_SEARCHED: ",".join(p.name for p in space.parameters),
                        PARAM_TEACHER: context.settings.teacher_path})
        except BaseException:
            lock.release()
            raise
        return candidate, study, parent, lock, running
    raise KdtuneError(f"no free sweep name after {base!r}; choose one with --name")


def check_resources(space: SearchSpace, console: Console) -> None:
    """A one-line error when no node of a fixed-size cluster can ever hold one trial (Ray would
    wait for ever); on an autoscaling cluster a warning: the trials wait for a bigger node.

    A trial runs on one node, so one node must have its CPUs and GPUs. A cluster autoscales
    when ``KDTUNE_AUTOSCALING`` is 1, or when Ray's cluster launcher left its bootstrap file
    (``~/ray_bootstrap_config.yaml``) on this machine."""
    import ray

    cpus, gpus = space.resources.cpus, space.resources.gpus
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    top_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    top_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    msg = (f"resources: a trial asks for {cpus:g} CPU(s) and {gpus:g} GPU(s) on one node, but "
           f"no node of the Ray cluster has them ({len(nodes)} node(s), the largest "
           f"{top_cpu:g} CPU(s) and {top_gpu:g} GPU(s))")
    if _autoscaling():
        console.print(f"warning: {msg}; the cluster autoscales, so the trials wait for a node "
                      "that has them")
        return
    raise KdtuneError(f"{msg}; lower resources.cpus / resources.gpus, or join a cluster that "
                      "has such a node (KDTUNE_AUTOSCALING=1 if it autoscales)")


def _autoscaling() -> bool:
    flag = os.environ.get("KDTUNE_AUTOSCALING", "").strip().lower()
    if flag:
        return flag in ("1", "true", "yes")
    return Path("~/ray_bootstrap_config.yaml").expanduser().exists()


def resume_sweep(name: str, *, address: str | None = None, mlflow_uri: str | None = None,
                 storage: str | None = None, study_storage: str | None = None,
                 num_samples: int | None = None, console: Console | None = None
                 ) -> SweepOutcome:
    """Finish an interrupted sweep (finished trials stay, unfinished ones continue), or with
    ``num_samples`` (the new total) add trials to a sweep, finished or not. One driver at a
    time: a sweep another live driver runs is refused (:class:`DriverLock`)."""
    console = console or Console(highlight=False, soft_wrap=True)  # a line stays one line
    store = Store.resolve(mlflow_uri, storage, study_storage)
    from kdtune.tracking import require_store

    if store.tracking_uri.startswith(("http://", "https://")):
        check_reachable(store.tracking_uri, "the MLflow tracking server")
    tracker = Tracker(store.tracking_uri)
    try:
        require_store(store.tracking_uri)
        run = tracker.sweep_run(name)
    except KdtuneError as exc:
        raise KdtuneError(f"{exc}; a `kdtune search` stopped before it registered its sweep "
                          "left nothing to resume: run it again") from None
    study = study_of_sweep(name, run.data.tags, study_storage)
    lock = DriverLock(study)
    lock.acquire()
    try:
        with Interrupts(f"continue with `kdtune resume {name}`") as interrupts:
            return _resume(name, store, tracker, run, study, storage, address, num_samples,
                           console, interrupts)
    finally:
        lock.release()


def _resume(name: str, store: Store, tracker: Tracker, run: Any, study: SweepStudy,
            storage: str | None, address: str | None, num_samples: int | None,
            console: Console, interrupts: Interrupts) -> SweepOutcome:
    tags = run.data.tags
    base_dir = store.experiment_dir(name) if storage else tags[TAG_STORAGE]
    if not is_uri(base_dir):
        base_dir = Path(base_dir)
    run = tracker.client.get_run(run.info.run_id)  # as it is now that this driver holds it
    trials = study.sweep_trials()
    total = int(study.attrs[ATTR_NUM_SAMPLES])
    if num_samples is not None:
        if num_samples < len(trials):
            raise KdtuneError(f"--num-samples {num_samples} is fewer than the {len(trials)} "
                              f"trials sweep {name!r} has; give the new total")
        total = num_samples
    outcome = SweepOutcome(name, run.info.run_id, True, store.tracking_uri, base_dir)
    if run.info.status == "FINISHED" and len(trials) >= total:
        console.print(f"sweep {name!r} already finished; nothing to resume (see `kdtune best "
                      f"{name}`; `kdtune resume {name} --num-samples N` adds trials)")
        return outcome
    space = load_space(study.attrs[ATTR_SPACE])
    if space.sha256 != study.attrs[ATTR_SPACE_SHA]:
        raise KdtuneError(f"{space.source} changed since sweep {name!r} started (sha256 "
                          f"{study.attrs[ATTR_SPACE_SHA][:12]} -> {space.sha256[:12]}); "
                          "restore it")
    from ray import tune

    segments = list(study.attrs[ATTR_SEGMENTS])
    current = str(base_dir) if not segments[-1] else f"{base_dir}/{segments[-1]}"
    restorable = run.info.status != "FINISHED" and tune.Tuner.can_restore(current)
    if not restorable and trials and not location_exists(base_dir) and storage:
        raise KdtuneError(f"no Ray experiment state for {name!r} at {base_dir}; pass "
                          "--storage with the folder the sweep was started with")
    kind = "extend" if total > int(study.attrs[ATTR_NUM_SAMPLES]) else "resume"
    if total != int(study.attrs[ATTR_NUM_SAMPLES]):
        study.set_attr(ATTR_NUM_SAMPLES, total)
        tracker.client.set_tag(run.info.run_id, TAG_NUM_SAMPLES, str(total))
        if run.info.status in ("FINISHED", "FAILED"):
            tracker.client.update_run(run.info.run_id, status="RUNNING")
    console.print(f"resuming sweep {name!r}: {len(trials)} of {total} trials so far; "
                  f"{store.describe()}")
    start_ray(address, console)  # before the context: its view table may use the cluster
    check_resources(space, console)
    runs = tracker.trial_runs(name)
    context = prepare_context(space, store, console, total, recorded=runs)
    context.latency_board = start_board()
    seed_board(context.latency_board, runs, context.data)
    context.ended = frozenset(t for t, ft in trials.items() if ft.state.is_finished())
    sweep = _Sweep(name, space, store, tracker, study, run.info.run_id, context, base_dir,
                   console)
    if restorable:
        tuner = tune.Tuner.restore(current, trainable=make_trainable(space, context),
                                   resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
        results = tuner.get_results()
        repaired = repair_checkpoints(results)
        if repaired:
            console.print(f"{repaired} trial(s) continue from the checkpoint after the one "
                          "Ray's last snapshot names (deleted just before the crash)")
        reasked = reask_lost_trials(study, {Path(r.path).name for r in results})
        if reasked:
            console.print(f"{reasked} trial(s) started just before the crash, unknown to Ray's "
                          "last snapshot, are asked again")
        return _run_segments(sweep, tuner, interrupts, kind)
    reask_lost_trials(study, set())
    return _run_segments(sweep, _next_tuner(sweep, total), interrupts, kind)


def _new_tuner(sweep: _Sweep, segment: str, num_samples: int) -> Any:
    """A Tuner for a new segment of ``num_samples`` trials."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from kdtune.tune.callbacks import MlflowTrials, Progress, TrialLabels
    from kdtune.tune.searcher import StudySearcher

    space, where = sweep.space, sweep.segment_dir(segment)
    storage_path, name = (str(where).rsplit("/", 1) if is_uri(where)
                          else (str(Path(where).parent), Path(where).name))
    return tune.Tuner(
        make_trainable(space, sweep.context),
        tune_config=tune.TuneConfig(search_alg=StudySearcher(sweep.study, space.metrics,
                                                             space.modes),
                                    scheduler=make_scheduler(space, sweep.study),
                                    num_samples=num_samples, reuse_actors=True,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, verbose=0,
            callbacks=[MlflowTrials(sweep.tracker, sweep.parent, sweep.name,
                                    sweep.context.settings, sweep.study),
                       Progress(space.metrics[0], space.modes[0],
                                TrialLabels(sweep.name, sweep.study)),
                       JsonLoggerCallback(), CSVLoggerCallback()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # a dead worker or node: continue from the last checkpoint (the trainable ends a
            # failure of the trial itself without raising, so that one is never retried)
            failure_config=tune.FailureConfig(max_failures=space.resources.max_retries)))


def _next_tuner(sweep: _Sweep, total: int) -> Any | None:
    """A Tuner for the trials the sweep still lacks, in a new segment; None if none lack."""
    missing = total - len(sweep.study.sweep_trials())
    if missing <= 0:
        return None
    segments = list(sweep.study.attrs[ATTR_SEGMENTS])
    if not location_exists(sweep.segment_dir(segments[-1])):  # never started: start it now
        return _new_tuner(sweep, segments[-1], missing)
    segment = f"extend-{len(segments) + 1}"
    sweep.study.set_attr(ATTR_SEGMENTS, [*segments, segment])
    sweep.tracker.client.set_tag(sweep.parent, TAG_STORAGE, redact(str(sweep.base_dir)))
    return _new_tuner(sweep, segment, missing)


def _run_segments(sweep: _Sweep, tuner: Any, interrupts: Interrupts, kind: str
                  ) -> SweepOutcome:
    """Fit ``tuner``, then new segments while the study lacks trials; finish the record. The
    driver's run (``kind``: search, resume or extend) is recorded on the parent run."""
    total = int(sweep.study.attrs[ATTR_NUM_SAMPLES])
    results = None
    log = sweep.store.logs / f"{sweep.name}.log"
    driver_run = sweep.tracker.start_driver_run(sweep.parent, kind)
    try:
        with ray_tune_logs(log):
            while tuner is not None:
                before = len(sweep.study.sweep_trials())
                with interrupts.fitting():
                    results = tuner.fit()
                if interrupts.count:  # (the hint stays until the command has said this)
                    raise Interrupted(f"sweep {sweep.name!r} stopped (Ctrl-C): every trial "
                                      "keeps its last epoch's checkpoint; continue with "
                                      f"`kdtune resume {sweep.name}`")
                trials = sweep.study.sweep_trials()
                if any(not t.state.is_finished() for t in trials.values()):
                    break  # interrupted: resume continues
                tuner = _next_tuner(sweep, total) if len(trials) > before else None
    finally:
        end_board(sweep.context.latency_board)
        with contextlib.suppress(Exception):  # (the record's end: best effort on the way out)
            sweep.tracker.end_driver_run(sweep.parent, driver_run)
    trials = sweep.study.sweep_trials()
    finished = all(t.state.is_finished() for t in trials.values()) and (
        len(trials) >= total or sweep.space.search.sampler == "grid")

    def tracked(write: Any, *args: Any) -> Any:  # the tracking server may be away a while
        return call_with_retries(write, *args, transient=transient_tracking_error,
                                 what=f"MLflow at {redact(sweep.store.tracking_uri)}")

    removed = tracked(_drop_orphans, sweep.tracker, sweep.name, set(trials))
    if removed:
        sweep.console.print(f"removed {removed} MLflow child run(s) of trials that are not the "
                            "sweep's (started just before a crash)")
    outcome = SweepOutcome(sweep.name, sweep.parent, finished, sweep.store.tracking_uri,
                           sweep.base_dir)
    from optuna.trial import TrialState

    if finished and trials and all(t.state == TrialState.FAIL for t in trials.values()):
        outcome.failure = (f"all {len(trials)} trials of sweep {sweep.name!r} failed: "
                           f"{tracked(_first_failure, sweep.tracker, sweep.name)}")
        tracked(sweep.tracker.end_sweep, sweep.parent, "FAILED")
        outcome.finished = False
    elif finished:
        try:
            tracked(_log_best_student, sweep, results)
        except Exception as exc:  # the weights are an extra: the sweep's record still ends
            sweep.console.print(f"warning: the best student's weights were not logged to "
                                f"MLflow ({type(exc).__name__}: {redact(str(exc))[:200]})")
        tracked(sweep.tracker.end_sweep, sweep.parent, "FINISHED")
        sweep.console.print(f"sweep {sweep.name!r} finished: {len(trials)} trials")
    else:
        sweep.console.print(f"sweep {sweep.name!r} stopped before the end; continue with "
                            f"`kdtune resume {sweep.name}` (Ray's log: {redact(str(log))})")
    return outcome


def _first_failure(tracker: Tracker, name: str) -> str:
    """The one-line reason of the sweep's first failed trial (its MLflow run's error tag)."""
    runs = tracker.trial_runs(name)
    column = f"tags.{TAG_ERROR}"
    failed = runs[runs["status"] == "FAILED"] if not runs.empty else runs
    if failed.empty or column not in failed.columns or failed[column].isna().all():
        return "no trial recorded why"
    return str(failed[column].dropna().iloc[0]).strip().splitlines()[0]


class Interrupts:
    """Ctrl-C while a command runs a sweep. Once, while trials run: Ray Tune stops the sweep
    gracefully (its stop signal, SIGUSR1): trials end, each keeping its last epoch's
    checkpoint, and Ray saves its experiment state, so ``kdtune resume`` continues it. Once,
    at any other moment: the command stops there (``KeyboardInterrupt``). Twice: the process
    ends at once. Either way one line says how to go on (:attr:`hint`)."""

    def __init__(self, hint: str = "nothing was registered; run `kdtune search` again") -> None:
        self.hint = hint
        self.count = 0
        self.in_fit = False
        self.previous: Any = None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self.handler)
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if self.previous is not None and not self.count:
            signal.signal(signal.SIGINT, self.previous)
        # after a Ctrl-C the handler stays: the next one ends the process at once, even in
        # the clean-up on the way out
        if kind is KeyboardInterrupt:  # a plain Ctrl-C (not one that already says what next)
            raise Interrupted(f"interrupted: {self.hint}") from None

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        self.in_fit = True
        try:
            yield
        finally:
            self.in_fit = False

    def handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1 and self.in_fit:
            print("kdtune: stopping: the trials end and keep their last epoch's checkpoint "
                  "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)  # Ray Tune's graceful stop
            return
        if self.count == 1:
            raise KeyboardInterrupt
        if self.hint:  # the command has not said how to go on yet (else: end silently)
            os.write(2, f"kdtune: stopped at once (second Ctrl-C); {self.hint}\n".encode())
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # end by the signal itself: no clean-up
        os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def ray_tune_logs(path: Path) -> Iterator[None]:
    """For as long as the context lasts, Ray Tune's and Ray Train's log records go to the file
    ``path`` (local folders) and not to the terminal: kdtune prints what a user needs, a
    trial's traceback is in its MLflow run."""
    handler: logging.Handler | None = None
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in ("ray.tune", "ray.train")] if handler else []
    terminal = [h for h in logging.getLogger("ray").handlers if h is not handler]
    for logger in loggers:
        logger.addHandler(handler)
    for h in terminal:
        h.addFilter(_not_tune)
    try:
        yield
    finally:
        for h in terminal:
            h.removeFilter(_not_tune)
        for logger in loggers:
            logger.removeHandler(handler)
        if handler is not None:
            handler.close()


def _not_tune(record: logging.LogRecord) -> bool:
    return not record.name.startswith(("ray.tune", "ray.train"))


def reask_lost_trials(study: SweepStudy, known_folders: set[str]) -> int:
    """Trials the study shows running that Ray's restored experiment does not hold (its last
    snapshot was written before they started) are told FAIL and asked again: their
    configuration is enqueued, so the next trial Ray starts runs it (a trial the driver died
    while asking, before Ray had its configuration, is only told FAIL). Both are marked
    ``reasked_after_resume``. Returns how many configurations were enqueued."""
    from optuna.trial import TrialState

    count = 0
    for t in study.trials():
        if t.state != TrialState.RUNNING:
            continue
        ray_id = t.user_attrs.get(ATTR_RAY_ID)
        if ray_id is not None and trial_dirname_of(ray_id) in known_folders:
            continue
        study.set_trial_attr(t.number, ATTR_REASKED, True)
        if ray_id is not None:  # Ray had its configuration: the next trial runs it
            study.study.enqueue_trial(t.params)
            count += 1
        study.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return count


def repair_checkpoints(results: Any) -> int:
    """Point restored trials at a checkpoint that exists; return how many needed it.

    kdtune keeps one checkpoint per trial (``num_to_keep=1``). Ray deletes the previous
    checkpoint as soon as it registers a new one, but writes the experiment snapshot that
    names the new one only later, so a driver killed in between leaves a snapshot naming a
    deleted checkpoint. The trial folder then holds the next checkpoint(s); the oldest of them
    is the one Ray had registered (its epoch is in MLflow), so it is copied to the name the
    snapshot expects and the trial continues from there (kdtune's trainable counts epochs
    itself). Local storage only: on a URI storage such a trial restarts as Ray decides.
    """
    import shutil

    repaired = 0
    for result in results:
        named = result.checkpoint
        if named is None or is_uri(result.path):
            continue
        expected = Path(named.path)
        if expected.exists() or not expected.parent.is_dir():
            continue
        newer = sorted(p for p in expected.parent.glob("checkpoint_*")
                       if p.is_dir() and p.name > expected.name)
        if newer:
            shutil.copytree(newer[0], expected)
            repaired += 1
    return repaired


def warm_start_configs(space: SearchSpace, tracker: Tracker, console: Console
                       ) -> list[dict[str, Any]]:
    """The ``top`` best configurations of the sweep named in ``search.warm_start`` that are
    valid in ``space`` (parameters active here, values allowed here), best first."""
    warm = space.search.warm_start
    if warm is None:
        return []
    from kdtune.tracking import config_from_run
    from kdtune.tune.searcher import config_key

    metrics, modes = tracker.objective(warm.source)
    frame = tracker.best_configs(warm.source, metrics=metrics[:1], modes=modes[:1])
    configs: dict[str, dict[str, Any]] = {}
    for _, row in frame.iterrows():
        params = params_in_space(space, config_from_run(row))
        if params is not None:
            configs.setdefault(config_key(params), params)
        if len(configs) == warm.top:
            break
    console.print(f"warm start: {len(configs)} configuration(s) of sweep {warm.source!r} "
                  f"valid here (of the best {len(frame)}), run first")
    return list(configs.values())


def _folder_taken(name: str, store: Store) -> KdtuneError:
    return KdtuneError(f"Ray storage {redact(str(store.experiment_dir(name)))} already exists; "
                       f"resume with `kdtune resume {name}`, or choose another --name or "
                       "--storage")


def _name_taken(name: str, store: Store) -> KdtuneError:
    return KdtuneError(f"sweep {name!r} already exists in {redact(store.tracking_uri)}; resume "
                       f"it with `kdtune resume {name}` or choose another --name")


def _check_name_free(tracker: Tracker, study: SweepStudy, name: str, store: Store) -> None:
    if tracker.find_sweep(name) is not None:
        raise _name_taken(name, store)
    if study.exists():
        raise KdtuneError(f"a study named {name!r} already exists in "
                          f"{redact(store.study_url)}; choose another --name")


def _num_samples(space: SearchSpace, override: int | None) -> int:
    n = override if override is not None else space.search.num_samples
    if n is None or n < 1:  # the space file requires it, but a grid has its size
        raise KdtuneError(f"num_samples {n} must be >= 1 (--num-samples or search.num_samples)")
    if space.search.sampler == "grid" and n > (size := len(expand_grid(space))):
        raise KdtuneError(f"--num-samples {n} is more than the grid's {size} configurations")
    return n


def _drop_orphans(tracker: Tracker, name: str, sweep_trials: set[str]) -> int:
    """Delete child runs of trials that are not the sweep's (Ray trials started just before a
    crash and asked again as new trials after it)."""
    runs = tracker.trial_runs(name)
    removed = 0
    for _, row in runs.iterrows():
        if str(row["trial_id"]) not in sweep_trials:
            tracker.client.delete_run(row["run_id"])
            removed += 1
    return removed


def _log_best_student(sweep: _Sweep, results: Any) -> None:
    """Attach the best finished trial's student weights to its MLflow run: from the last
    fit's results, else from the segment that ran the trial."""
    from ray.tune import ExperimentAnalysis

    space = sweep.space
    best = sweep.tracker.best_configs(sweep.name, metrics=space.metrics[:1],
                                      modes=space.modes[:1], top=1)
    if best.empty:
        return
    row = best.iloc[0]
    folder = trial_dirname_of(str(row["trial_id"]))
    checkpoint = next((r.checkpoint for r in results or [] if Path(r.path).name == folder), None)
    for segment in sweep.study.attrs[ATTR_SEGMENTS] if checkpoint is None else []:
        analysis = ExperimentAnalysis(str(sweep.segment_dir(segment)))
        trial = next((t for t in analysis.trials if t.trial_id == row["trial_id"]), None)
        if trial is not None:
            checkpoint = analysis.get_last_checkpoint(trial)
            break
    if checkpoint is not None:
        log_student(sweep.tracker, str(row["run_id"]), checkpoint)
        sweep.console.print(f"best student's weights logged to MLflow run {row['run_id']}")


def log_student(tracker: Tracker, run_id: str, checkpoint: Any) -> None:
    """The student of a trial's last checkpoint (its first seed) as ``student.pt`` (weights
    and config) on MLflow run ``run_id``."""
    import torch

    from kdtune.report import STUDENT_FILE, save_student

    with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as out:
        seeds = sorted(Path(folder).glob(CHECKPOINT_FILE.format(seed="*")))
        state = torch.load(seeds[0], map_location="cpu", weights_only=True)
        save_student(Path(out) / STUDENT_FILE, state["config"], state["model"])
        tracker.log_artifact(run_id, Path(out) / STUDENT_FILE)


def trial_dirname_of(trial_id: str) -> str:
    return f"trial_{trial_id}"


def is_uri(location: str | Path) -> bool:
    """A storage URI (``s3://``, ``gs://``, ``file://``) reached through pyarrow, not a path."""
    return "://" in str(location)


def location_exists(location: Path | str) -> bool:
    """Whether a local path or a storage URI exists."""
    if not is_uri(location):
        return Path(location).exists()
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(str(location))
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
