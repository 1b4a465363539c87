"""``kdtune finalize``: a sweep's best configurations re-trained on fresh seeds beside their
baselines, read on the test set once, summarised with intervals.

The finalists are chosen on validation only (the sweep's objective; the Pareto front for
several), among every trial the sweep has when it runs (an extended sweep's too). Each trains
with ``S`` training seeds the sweep did not use (``split_seed`` stays the sweep's, so every
run sees the same test split), and so does its baseline: the same configuration with ``method:
none`` and no feature term (the student alone). The sweep's teacher is read on the test set
once. The runs are Ray trials logged as child runs of the sweep's parent tagged
``kdtune.stage=final``; search queries, counts and clean-up leave them out.

Finalize runs exactly the finalist runs its ``--top``/``--seeds`` need that are not finished
in MLflow yet: a finished run is reused, whichever earlier finalize made it. Each invocation
that trains puts its runs in a Ray experiment of its own (``<sweep folder>/finalize``, then
``finalize-2``, ...); one stopped before its end is restored and continued by the next, when
every run it still owes is needed. Finalist runs of trials that fall out of the top stay in
MLflow, tagged ``kdtune.out_of_top``, and leave the table.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from kdtune.config import TrainConfig
from kdtune.errors import Interrupted, KdtuneError
from kdtune.mlflow_store import require_store
from kdtune.report import STUDENT_FILE
from kdtune.resolve import config_from_dict, config_keys, replace_config
from kdtune.runs import config_from_run, decode_param, run_config
from kdtune.tracking import Tracker
from kdtune.vocabulary import (
    LATENCY_FIGURES,
    LATENCY_SPREADS,
    ROLE_ALONE,
    ROLE_KD,
    ROLE_TEACHER,
    STAGE_FINAL,
    TAG_FINALIST,
    TAG_OUT_OF_TOP,
    TAG_READABLE_ID,
    TAG_ROLE,
    TAG_SPACE,
    TAG_SPACE_SHA,
    TAG_STAGE,
    TAG_STORAGE,
    TAG_SWEEP,
    teacher_label,
)

#: Config fields a finalist run takes from the finalize run itself, not from the trial.
NOT_CARRIED = ("seed", "teacher", "device", "threads", "out")
#: Columns of the finalists table.
COLUMNS = ("finalist", "config", "seeds", "test_accuracy", "sd", "ci95", "student_alone",
           "gain", "gain_ci95", "significant", "gap_closed", "params", "latency_ms_b1",
           "speedup")


def fresh_seeds(used: Sequence[int], count: int) -> list[int]:
    """The ``count`` smallest training seeds not in ``used``."""
    return list(itertools.islice((s for s in itertools.count() if s not in set(used)), count))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of ``values`` (at least two)."""
    from scipy import stats

    n = len(values)
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def finalist_jobs(finalists: Any, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Ray trial configs of a finalize run: each finalist's configuration (rows of
    ``Tracker.best_configs``) and its student-alone baseline, once per seed; a baseline
    shared by several finalists runs once. A job's ``finalist`` is the readable id of the
    trial it re-trains."""
    jobs, baselines = [], set()
    for _, row in finalists.iterrows():
        label = trial_id_of(row)
        config = run_config(row, where=f"trial {label}")
        kd = _params(config)
        alone = _params(student_alone(config))
        key = baseline_key(config)
        for seed in seeds:
            jobs.append({"params": kd, "seed": seed, "role": ROLE_KD, "finalist": label})
            if key not in baselines:
                jobs.append({"params": alone, "seed": seed, "role": ROLE_ALONE,
                             "finalist": label})
        baselines.add(key)
    return jobs


def trial_id_of(row: Any) -> str:
    """A trial's readable id (a row of ``Tracker.trial_runs``); its Ray trial id when it has
    none (a sweep of an older kdtune)."""
    label = row.get(f"tags.{TAG_READABLE_ID}")
    return str(label) if isinstance(label, str) else str(row["trial_id"])


def job_key(role: str, finalist: str, config: TrainConfig, seed: int) -> tuple[str, str, int]:
    """What one finalist run trains: a distilled finalist by the trial it re-trains, a
    baseline by :func:`baseline_key` (shared by the finalists of one student), and the seed."""
    return role, finalist if role == ROLE_KD else baseline_key(config), int(seed)


def _job_key(job: Mapping[str, Any]) -> tuple[str, str, int]:
    return job_key(job["role"], job["finalist"], config_from_dict(job["params"]),
                   job["seed"])


def _run_key(row: Any) -> tuple[str, str, int]:
    return job_key(row[f"tags.{TAG_ROLE}"], str(row.get(f"tags.{TAG_FINALIST}")),
                   run_config(row), int(decode_param(row["params.seed"])))


def _params(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in NOT_CARRIED}


def student_alone(config: TrainConfig) -> TrainConfig:
    """The baseline of ``config``: the same student trained without its teacher (``method:
    none`` and no feature term, whose method parameters go with them; ``alpha``,
    ``temperature`` and ``kd_warmup``, which it does not read, at their defaults, so that
    finalists differing only in them share one baseline)."""
    from kdtune.methods.registry import KD_FIELDS

    return replace_config(config, method="none", feature_method="none",
                          **{f: getattr(TrainConfig(), f) for f in KD_FIELDS})


def baseline_key(config: TrainConfig) -> str:
    """What names the student-alone baseline of ``config`` (a finalist's configuration, or a
    baseline's own): :func:`student_alone` of it, less what a finalist run takes from the
    finalize run (the seed among it). :func:`summarise` pairs a finalist with its
    baseline runs by this key, not by their ``kdtune.finalist`` tag: a baseline shared by
    several finalists runs once, tagged with the first of them only."""
    return repr(sorted(_params(student_alone(config)).items()))


def summarise(runs: Any, teacher_accuracy: float | None, searched: Sequence[str],
              jobs: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per finalist (rows of ``Tracker.final_runs``; with ``jobs``, only the runs of
    those jobs, so the table shows what was asked): test accuracy mean ± sd and its 95%
    t-interval over seeds, the gain over the student alone with a paired t-interval (seeds
    paired), whether that interval excludes 0, the gap closed ``(KD - alone) / (teacher -
    alone)``, and the student's cost."""
    done = runs[runs["status"] == "FINISHED"]
    done = done[done[f"tags.{TAG_ROLE}"] != ROLE_TEACHER]
    if jobs is not None:
        wanted = {_job_key(j) for j in jobs}
        done = done[[_run_key(r) in wanted for _, r in done.iterrows()]]
    kd = done[done[f"tags.{TAG_ROLE}"] == ROLE_KD]
    alone = done[done[f"tags.{TAG_ROLE}"] == ROLE_ALONE]
    alone_keys = [baseline_key(run_config(r)) for _, r in alone.iterrows()]
    order = list(dict.fromkeys(j["finalist"] for j in jobs or ()))
    rows = []
    for finalist, group in kd.groupby(f"tags.{TAG_FINALIST}", sort=False):
        config = config_from_run(group.iloc[0], fields=config_keys())
        key = baseline_key(run_config(group.iloc[0]))
        mine = alone.loc[[k == key for k in alone_keys]]
        by_seed = dict(zip(group["params.seed"], group["metrics.test_accuracy"], strict=True))
        alone_by_seed = dict(zip(mine["params.seed"], mine["metrics.test_accuracy"],
                                 strict=True))
        values = list(by_seed.values())
        row: dict[str, Any] = {
            "finalist": finalist, "seeds": len(values),
            "config": " ".join(f"{k}={config[k]:.3g}" if isinstance(config[k], float)
                               else f"{k}={config[k]}" for k in searched if k in config),
            "test_accuracy": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "ci95": list(t_interval(values)) if len(values) > 1 else None,
            **{m: float(group[f"metrics.{m}"].mean())
               for m in ("params", "latency_ms_b1", "speedup")
               if f"metrics.{m}" in group.columns}}
        paired = [by_seed[s] - alone_by_seed[s] for s in by_seed if s in alone_by_seed]
        if paired:
            row["student_alone"] = statistics.fmean(alone_by_seed.values())
            row["gain"] = statistics.fmean(paired)
            if len(paired) > 1 and statistics.stdev(paired) > 0:
                low, high = t_interval(paired)
                row["gain_ci95"], row["significant"] = [low, high], not low <= 0 <= high
            else:
                row["gain_ci95"], row["significant"] = None, row["gain"] != 0
            if teacher_accuracy is not None and teacher_accuracy > row["student_alone"]:
                # (a teacher no better than the student alone leaves no gap to close)
                row["gap_closed"] = row["gain"] / (teacher_accuracy - row["student_alone"])
        rows.append(row)
    if order:  # the finalists' own order: best first
        rows.sort(key=lambda r: order.index(r["finalist"]) if r["finalist"] in order
                  else len(order))
    return rows


def show_finalists(name: str, rows: list[dict[str, Any]], teacher_accuracy: float | None,
                   fmt: str = "table") -> None:
    """Print the finalists table: a terminal table, CSV or JSON."""
    import json

    if fmt == "json":
        print(json.dumps({"teacher_test_accuracy": teacher_accuracy, "finalists": rows}))
        return
    if fmt == "csv":
        import pandas as pd

        print(pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(index=False), end="")
        return
    from kdtune.report import print_table, table_from_rows

    def interval(pair: Any) -> str:
        return "-" if pair is None else f"[{pair[0]:.4f}, {pair[1]:.4f}]"

    shown = [{**r, "test_accuracy": f"{r['test_accuracy']:.4f} ± {r['sd'] or 0:.4f}",
              "ci95": interval(r.get("ci95")),
              "gain": "-" if r.get("gain") is None else
              f"{r['gain']:+.4f}{'' if r.get('significant') else ' (not significant)'}",
              "gain_ci95": interval(r.get("gain_ci95"))} for r in rows]
    columns = ["finalist", "config", "seeds", "test_accuracy", "ci95", "student_alone", "gain",
               "gain_ci95", "gap_closed", "params", "latency_ms_b1", "speedup"]
    teacher = "" if teacher_accuracy is None else f"; teacher test accuracy " \
        f"{teacher_accuracy:.4f}"
    print_table(table_from_rows(shown, columns, title=f"finalists of sweep {name!r}, test set "
                                f"read once (mean ± sd over fresh seeds){teacher}"))


def run_finalize(name: str, *, top: int = 3, seeds: int = 3, address: str | None = None,
                 mlflow_uri: str | None = None, storage: str | None = None,
                 study_storage: str | None = None,
                 console: Console | None = None) -> tuple[list[dict[str, Any]], float | None]:
    """Re-train the ``top`` best configurations of a finished sweep with ``seeds`` fresh
    training seeds each, beside their baselines and the teacher (the runs not finished
    already); returns the finalists table and the teacher's test accuracy."""
    from kdtune.tune.latency_board import end_board, seed_board, start_board
    from kdtune.tune.prepare import prepare_context
    from kdtune.tune.ray_session import Interrupts, start_ray
    from kdtune.tune.stores import Store
    from kdtune.tune.study import load_unchanged_space

    console = console or Console(highlight=False, soft_wrap=True)  # a line stays one line
    if top < 1:
        raise KdtuneError(f"--top {top} must be >= 1")
    if seeds < 2:
        raise KdtuneError(f"--seeds {seeds} must be >= 2 (an interval needs two seeds)")
    store = Store.resolve(mlflow_uri, storage, study_storage)
    require_store(store.tracking_uri)
    tracker = Tracker(store.tracking_uri)
    run = tracker.sweep_run(name)
    if run.info.status != "FINISHED":
        raise KdtuneError(f"sweep {name!r} has not finished; finish it with `kdtune resume "
                          f"{name}` first")
    tags = run.data.tags
    space = load_unchanged_space(tags[TAG_SPACE], tags[TAG_SPACE_SHA], name)
    metrics, modes = tracker.objective(name)
    finalists = tracker.best_configs(name, metrics=metrics, modes=modes, top=top)
    if finalists.empty:
        raise KdtuneError(f"sweep {name!r} has no finished trial to finalize")
    searched = [p.name for p in space.parameters]
    jobs = finalist_jobs(finalists, fresh_seeds(space.seeds, seeds))
    parent = run.info.run_id
    existing = tracker.final_runs(name)
    finished = _finished_keys(existing)
    todo = [j for j in jobs if _job_key(j) not in finished]
    chosen = [trial_id_of(r) for _, r in finalists.iterrows()]
    dropped = _mark_out_of_top(tracker, existing, jobs)
    console.print(f"finalizing sweep {name!r}: {len(finalists)} finalist(s) ({', '.join(chosen)})"
                  f" x {seeds} fresh seeds, with their student-alone baselines: {len(jobs)} "
                  f"runs, {len(jobs) - len(todo)} finished already (reused), {len(todo)} to "
                  f"train; {store.describe()}")
    if dropped:
        console.print(f"finalists no longer in the top {top} keep their runs (tagged "
                      f"{TAG_OUT_OF_TOP}) and leave the table: {', '.join(dropped)}")
    base = store.sweep_dir(name, tags[TAG_STORAGE], storage_given=bool(storage))
    hint = f"run `kdtune finalize {name}` again: it continues where it stopped"
    teacher_run = (not existing.empty) and (existing[f"tags.{TAG_ROLE}"] == ROLE_TEACHER).any()
    if todo or not teacher_run:
        with Interrupts(hint) as interrupts:
            start_ray(address, console)
            # the sweep's latency figures (the teacher's, and each architecture's on its
            # board): a finalist's speedup is the one its trials reported
            trials = tracker.trial_runs(name)
            context = prepare_context(space, store, console, len(todo), recorded=trials)
            _log_teacher(tracker, parent, name, context)
            if todo:
                context.latency_board = start_board()
                seed_board(context.latency_board, trials, context.data)
                driver_run = tracker.start_driver_run(parent, "finalize")
                try:
                    with interrupts.fitting():
                        _fit(space, context, tracker, parent, name, todo, base, store, console)
                finally:
                    end_board(context.latency_board)
                    tracker.end_driver_run(parent, driver_run)
                if interrupts.count:
                    raise Interrupted(f"finalize of {name!r} stopped (Ctrl-C); {hint}")
    runs = tracker.final_runs(name)
    teacher_accuracy = _teacher_accuracy(runs)
    rows = summarise(runs, teacher_accuracy, searched, jobs)
    _log_table(tracker, parent, rows)
    return rows, teacher_accuracy


def _finished_keys(runs: Any) -> set[tuple[str, str, int]]:
    """The jobs that have a FINISHED finalist run among ``runs``."""
    if runs.empty:
        return set()
    done = runs[(runs["status"] == "FINISHED") & (runs[f"tags.{TAG_ROLE}"] != ROLE_TEACHER)]
    return {_run_key(r) for _, r in done.iterrows()}


def _mark_out_of_top(tracker: Tracker, runs: Any, jobs: Sequence[Mapping[str, Any]]
                     ) -> list[str]:
    """Tag each existing finalist run in or out of this finalize's top (a baseline is in
    while a finalist of the top shares it); return the finalists newly out of it."""
    if runs.empty:
        return []
    wanted = {k[:2] for k in map(_job_key, jobs)}  # (role, finalist or baseline), any seed
    dropped = []
    for _, row in runs[runs[f"tags.{TAG_ROLE}"] != ROLE_TEACHER].iterrows():
        out = "false" if _run_key(row)[:2] in wanted else "true"
        if row.get(f"tags.{TAG_OUT_OF_TOP}") != out:
            tracker.client.set_tag(row["run_id"], TAG_OUT_OF_TOP, out)
            if out == "true" and row[f"tags.{TAG_ROLE}"] == ROLE_KD:
                dropped.append(str(row[f"tags.{TAG_FINALIST}"]))
    return list(dict.fromkeys(dropped))


def _teacher_accuracy(runs: Any) -> float | None:
    if runs.empty:
        return None
    teacher = runs[(runs[f"tags.{TAG_ROLE}"] == ROLE_TEACHER) & (runs["status"] == "FINISHED")]
    return None if teacher.empty else float(teacher.iloc[0]["metrics.test_accuracy"])


def _log_teacher(tracker: Tracker, parent: str, name: str, context: Any) -> None:
    """The teacher read on the test set once, as a finalist run of its own (once per sweep)."""
    if context.teacher is None:
        return
    runs = tracker.final_runs(name)
    if not runs.empty and (runs[f"tags.{TAG_ROLE}"] == ROLE_TEACHER).any():
        return
    accuracy = context.teacher.test_accuracy(context.data)
    run_id = tracker.start_trial(parent, "teacher", params={"teacher": context.settings
                                                            .teacher_path},
                                 tags={TAG_SWEEP: name, TAG_STAGE: STAGE_FINAL,
                                       TAG_ROLE: ROLE_TEACHER, TAG_FINALIST: "teacher",
                                       TAG_READABLE_ID: teacher_label(name)})
    latency = context.teacher.latency(256)
    metrics = {"test_accuracy": accuracy,
               "params": sum(p.numel() for p in context.teacher.model.parameters()),
               LATENCY_FIGURES[256]: latency.ms}
    if math.isfinite(latency.iqr_ms):  # unknown for a figure recorded without one
        metrics[LATENCY_SPREADS[256]] = latency.iqr_ms
    tracker.end_trial(run_id, "FINISHED", metrics=metrics)


def _fit(space: Any, context: Any, tracker: Tracker, parent: str, name: str,
         todo: list[dict[str, Any]], base: Any, store: Any, console: Console) -> None:
    """Train the ``todo`` finalist runs as Ray trials: first the latest finalize experiment
    when it stopped before its end and every run it still owes is among ``todo`` (restored,
    its finished trials not trained again; its jobs are kept on the parent run), then a new
    experiment for what is left."""
    from ray.tune import grid_search

    from kdtune.tune.ray_session import (
        can_restore,
        log_student,
        new_tuner,
        ray_tune_logs,
        restored_tuner,
        trainable,
        trial_dirname_of,
    )
    from kdtune.tune.stores import join_location
    from kdtune.tune.trainable import run_final

    function = trainable(run_final, space, context)
    folders = _finalize_folders(base)
    finished = _finished_keys(tracker.final_runs(name))
    results = []
    with ray_tune_logs(store.logs / f"{name}-finalize.log"):
        last = _recorded_jobs(tracker, parent, folders[-1]) if folders else None
        owed = {_job_key(j) for j in last or ()} - finished
        if owed and owed <= {_job_key(j) for j in todo} and can_restore(folders[-1]):
            console.print(f"continuing the finalize that stopped before its end: {len(owed)} "
                          "run(s)")
            results.extend(restored_tuner(function, folders[-1]).fit())
            finished = _finished_keys(tracker.final_runs(name))
        left = [j for j in todo if _job_key(j) not in finished]
        if left:
            folder = join_location(base, f"finalize-{len(folders) + 1}" if folders
                                   else "finalize")
            tracker.client.log_dict(parent, left, _jobs_artifact(folder))
            # one trial per job
            results.extend(new_tuner(
                function, folder, tracker=tracker, parent=parent, sweep=name,
                settings=context.settings, shown=("test_accuracy", "max"), max_failures=0,
                param_space={"job": grid_search(left)},
                max_concurrent=space.search.max_concurrent).fit())
    for result in results:  # the distilled students' weights, for `kdtune export`
        job = (result.config or {}).get("job", {})
        trial_id = Path(result.path).name.removeprefix(trial_dirname_of(""))
        run_id = tracker.find_trial(parent, trial_id)
        if job.get("role") == ROLE_KD and result.checkpoint is not None and run_id is not None \
                and STUDENT_FILE not in {a.path for a in tracker.client.list_artifacts(run_id)}:
            log_student(tracker, run_id, result.checkpoint)
    failed = sum(r.error is not None for r in results)
    if failed:
        raise KdtuneError(f"{failed} finalist run(s) failed; see their MLflow runs (tag "
                          f"kdtune.error); run `kdtune finalize {name}` again to retry them")


def _jobs_artifact(folder: Any) -> str:
    """Where the parent run keeps the jobs of the finalize experiment at ``folder``."""
    return f"finalize/experiments/{str(folder).rstrip('/').rsplit('/', 1)[-1]}.json"


def _recorded_jobs(tracker: Tracker, parent: str, folder: Any) -> list[dict[str, Any]] | None:
    """The jobs the finalize experiment at ``folder`` was started with (None: not recorded)."""
    import json
    import tempfile

    artifact = _jobs_artifact(folder)
    listed = {a.path for a in tracker.client.list_artifacts(parent, artifact.rsplit("/", 1)[0])}
    if artifact not in listed:
        return None
    with tempfile.TemporaryDirectory() as out:
        return json.loads(Path(tracker.client.download_artifacts(parent, artifact, out))
                          .read_text())


def _finalize_folders(base: Any) -> list[Any]:
    """The sweep's finalize experiments so far (``finalize``, ``finalize-2``, ...), oldest
    first."""
    from kdtune.tune.stores import join_location, location_exists

    folders = []
    while location_exists(folder := join_location(base, f"finalize-{len(folders) + 1}"
                                                  if folders else "finalize")):
        folders.append(folder)
    return folders


def _log_table(tracker: Tracker, parent: str, rows: list[dict[str, Any]]) -> None:
    """The finalists table as ``finalists.json`` and ``finalists.csv`` on the parent run."""
    import json
    import tempfile
    from pathlib import Path

    import pandas as pd

    with tempfile.TemporaryDirectory() as out:
        (Path(out) / "finalists.json").write_text(json.dumps(rows, indent=2))
        pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(Path(out) / "finalists.csv",
                                                         index=False)
        tracker.log_artifact(parent, out, "finalize")
