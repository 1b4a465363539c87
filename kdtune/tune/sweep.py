"""Run, resume and extend a sweep: space file -> teacher and data once -> Ray Tune -> MLflow.

The driver validates the space, trains or loads the teacher once, computes its outputs on the
training set once, and ships both with the data to every trial through Ray's object store
(:mod:`.prepare`). The search state is an Optuna study (:mod:`.study`): the searcher asks and
tells it, the scheduler keeps its rungs in it, and a sweep is resumed or extended by reopening
it. Ray Tune runs the trials and keeps their checkpoints (:mod:`.ray_session`), one Ray
experiment per run of the driver that adds trials ("segments": the first in
``<storage>/<name>``, later ones in ``<storage>/<name>/extend-<k>``). MLflow records
everything.

Read top to bottom: :func:`run_sweep` registers a new sweep (:func:`_register`),
:func:`resume_sweep` reopens one (:func:`_resume`); both run its segments
(:func:`_run_segments`) and end its record (:func:`_end`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

import kdtune
from kdtune.errors import Interrupted, KdtuneError
from kdtune.mlflow_store import require_store, sqlite_path, transient_tracking_error
from kdtune.tracking import Tracker
from kdtune.tune.latency_board import end_board, seed_board, start_board
from kdtune.tune.prepare import prepare_context
from kdtune.tune.ray_session import (
    Interrupts,
    can_restore,
    check_resources,
    log_student,
    new_tuner,
    ray_tune_logs,
    restored_tuner,
    start_ray,
    trainable,
    trial_dirname_of,
)
from kdtune.tune.recovery import (
    drop_orphans,
    reask_lost_trials,
    repair_checkpoints,
    warm_start_configs,
)
from kdtune.tune.space import SearchSpace, expand_grid, load_space, optuna_params
from kdtune.tune.stores import Store, join_location, location_exists
from kdtune.tune.study import (
    ATTR_NUM_SAMPLES,
    ATTR_SEED,
    ATTR_SPACE,
    ATTR_SPACE_SHA,
    DriverLock,
    SweepBusy,
    SweepStudy,
    load_unchanged_space,
    study_of_sweep,
)
from kdtune.tune.trainable import SweepContext, run_trial
from kdtune.urls import call_with_retries, redact
from kdtune.versions import git_sha, package_versions
from kdtune.vocabulary import (
    PARAM_OBJECTIVE_METRICS,
    PARAM_OBJECTIVE_MODES,
    PARAM_SAMPLER_SEED,
    PARAM_SEARCHED,
    PARAM_TEACHER,
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
)

#: Study attribute: the sweep's Ray experiments (segments), relative to its first one.
ATTR_SEGMENTS = "segments"


# -- a new sweep ------------------------------------------------------------------------------
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
        return join_location(self.base_dir, segment) if segment else self.base_dir


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


# -- an existing sweep -------------------------------------------------------------------------
def resume_sweep(name: str, *, address: str | None = None, mlflow_uri: str | None = None,
                 storage: str | None = None, study_storage: str | None = None,
                 num_samples: int | None = None, console: Console | None = None
                 ) -> SweepOutcome:
    """Finish an interrupted sweep (finished trials stay, unfinished ones continue), or with
    ``num_samples`` (the new total) add trials to a sweep, finished or not. One driver at a
    time: a sweep another live driver runs is refused (:class:`DriverLock`)."""
    console = console or Console(highlight=False, soft_wrap=True)  # a line stays one line
    store = Store.resolve(mlflow_uri, storage, study_storage)
    store.check_tracking_server()
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
    base_dir = store.sweep_dir(name, run.data.tags[TAG_STORAGE], storage_given=bool(storage))
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
    space = load_unchanged_space(study.attrs[ATTR_SPACE], study.attrs[ATTR_SPACE_SHA], name)
    segments = list(study.attrs[ATTR_SEGMENTS])
    current = str(base_dir) if not segments[-1] else f"{base_dir}/{segments[-1]}"
    restorable = run.info.status != "FINISHED" and can_restore(current)
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
        tuner = restored_tuner(trainable(run_trial, space, context), current)
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


# -- its segments -------------------------------------------------------------------------------
def _new_tuner(sweep: _Sweep, segment: str, num_samples: int) -> Any:
    """A Tuner for a new segment of ``num_samples`` trials, asked from the study."""
    from kdtune.tune.scheduler import trial_scheduler
    from kdtune.tune.searcher import StudySearcher

    space = sweep.space
    return new_tuner(
        trainable(run_trial, space, sweep.context), sweep.segment_dir(segment),
        tracker=sweep.tracker, parent=sweep.parent, sweep=sweep.name,
        settings=sweep.context.settings, study=sweep.study,
        shown=(space.metrics[0], space.modes[0]), max_failures=space.resources.max_retries,
        num_samples=num_samples,
        search_alg=StudySearcher(sweep.study, space.metrics, space.modes),
        scheduler=trial_scheduler(space, sweep.study))


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
    return _end(sweep, results, log)


def _end(sweep: _Sweep, results: Any, log: Path) -> SweepOutcome:
    """End the sweep's record after its driver fitted what it could: stray trial runs
    removed; the parent run FINISHED (with the best student's weights) or FAILED (every trial
    failed), or left running for ``kdtune resume``."""
    total = int(sweep.study.attrs[ATTR_NUM_SAMPLES])
    trials = sweep.study.sweep_trials()
    finished = all(t.state.is_finished() for t in trials.values()) and (
        len(trials) >= total or sweep.space.search.sampler == "grid")

    def tracked(write: Any, *args: Any) -> Any:  # the tracking server may be away a while
        return call_with_retries(write, *args, transient=transient_tracking_error,
                                 what=f"MLflow at {redact(sweep.store.tracking_uri)}")

    removed = tracked(drop_orphans, sweep.tracker, sweep.name, set(trials))
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
