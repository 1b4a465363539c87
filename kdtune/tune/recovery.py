"""What a sweep's driver mends when it starts again: trials lost or half-recorded by a driver
that died (asked again, checkpoints repaired, stray MLflow runs removed), and the warm start
of a new sweep from the best configurations of an earlier one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from kdtune.runs import config_from_run
from kdtune.tracking import Tracker
from kdtune.tune.ray_session import trial_dirname_of
from kdtune.tune.space import SearchSpace, params_in_space
from kdtune.tune.stores import is_uri
from kdtune.tune.study import ATTR_RAY_ID, ATTR_REASKED, SweepStudy


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


def drop_orphans(tracker: Tracker, name: str, sweep_trials: set[str]) -> int:
    """Delete child runs of trials that are not the sweep's (Ray trials started just before a
    crash and asked again as new trials after it)."""
    runs = tracker.trial_runs(name)
    removed = 0
    for _, row in runs.iterrows():
        if str(row["trial_id"]) not in sweep_trials:
            tracker.client.delete_run(row["run_id"])
            removed += 1
    return removed
