"""kdtune's MLflow record: one parent run per sweep, one child run per trial.

A thin layer over :class:`mlflow.tracking.MlflowClient` with no fluent (global) state, so a
Ray worker can use it given only the tracking URI. Nothing in the core imports this module:
``import kdtune`` never loads MLflow or pandas.

Layout in the store:

- parent run: name and tag ``kdtune.sweep`` = the sweep name, tag ``kdtune.kind=sweep``;
  params such as ``objective.metrics`` / ``objective.modes`` (comma-joined).
- child run: tags ``mlflow.parentRunId``, ``kdtune.kind=trial``, ``kdtune.sweep``,
  ``kdtune.trial_id`` (the Ray trial id); params = the resolved config, each value a string
  (plain strings as they are, anything else as JSON, see :func:`encode_param`); metrics per
  epoch with ``step`` and final metrics at the end; status FINISHED, KILLED (tag
  ``kdtune.rung``) or FAILED (tag ``kdtune.error``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.errors import KdtuneError, did_you_mean
from kdtune.mlflow_store import default_store, default_tracking_uri, require_store, sqlite_path
from kdtune.runs import (
    TRIAL_STATUSES,
    as_list,
    check_logged,
    driver_run_seconds,
    encode_param,
    is_final,
    objective_of,
    rank_trials,
    runs_frame,
)
from kdtune.urls import file_lock, recall, redact, remember
from kdtune.vocabulary import (
    DRIVER_RUN_KINDS,
    MODES,
    TAG_DRIVER_RUNS,
    TAG_KIND,
    TAG_PARENT,
    TAG_READABLE_ID,
    TAG_SWEEP,
    TAG_TRIAL_ID,
)

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "kdtune"
ARTIFACTS_DIRNAME = "artifacts"

_MAX_TAG_LEN = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
_MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_PAGE = 1000  # search_runs page size (MLflow's default maximum)


# -- the tracker --------------------------------------------------------------------------
class Tracker:
    """kdtune's view of one MLflow experiment; cheap to create, safe in any process."""

    def __init__(self, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT) -> None:
        self.tracking_uri = remember(tracking_uri)
        self.experiment = experiment
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the client and without the URI's password (Ray keeps the pickle in
        its experiment state; the resuming process was given the full URI)."""
        return {**self.__dict__, "_client": None, "tracking_uri": redact(self.tracking_uri)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tracking_uri = recall(self.tracking_uri)

    # -- plumbing -------------------------------------------------------------------------
    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            import os

            from mlflow.tracking import MlflowClient

            # MLflow prints a link per run ended on a server, with the URI's credentials;
            # kdtune says where the runs are itself
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _store_exists(self) -> bool:
        """False only for a SQLite file that is not there (reads must not create it)."""
        path = sqlite_path(self.tracking_uri)
        return path is None or path.is_file()

    def _existing_experiment_id(self) -> str | None:
        """The experiment's id without creating the database or the experiment."""
        if self._experiment_id is None and self._store_exists():
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is not None and exp.lifecycle_stage == "active":
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def ensure_experiment(self) -> str:
        """Create the database and the experiment if needed; return the experiment id.

        Call it once on the driver before trials start: concurrent first-time creation races.
        A SQLite store keeps its artifacts next to the database (``<store>/artifacts``).
        """
        if self._experiment_id is not None:
            return self._experiment_id


        db = sqlite_path(self.tracking_uri)
        if db is not None:  # two drivers starting in one new folder create the store once
            with file_lock(db):
                return self._ensure_experiment(db)
        return self._ensure_experiment(None)

    def _ensure_experiment(self, db: Path | None) -> str:
        from mlflow.exceptions import MlflowException

        from kdtune.sqlite_store import copy_template, save_template

        artifact_location, created = None, False
        if db is not None:
            # a new store: a copy of the migrated empty template, else MLflow creates it
            created = not db.exists() and not copy_template(db)
            db.parent.mkdir(parents=True, exist_ok=True)
            artifact_location = (db.parent / ARTIFACTS_DIRNAME).as_uri()
        # MlflowClient's constructor creates (and migrates) a SQLite database it does not
        # find; keep its two INFO lines out of the CLI's output.
        quiet = logging.getLogger("mlflow.store.db.utils")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            exp = self.client.get_experiment_by_name(self.experiment)
        finally:
            quiet.setLevel(level)
        if created and exp is None:
            assert db is not None
            save_template(db)  # still empty: the template for the next new store
        if exp is None:
            try:
                self._experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=artifact_location)
                return self._experiment_id
            except MlflowException as exc:  # lost a race: someone else created it
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = self.client.get_experiment_by_name(self.experiment)
        assert exp is not None
        if exp.lifecycle_stage != "active":
            raise KdtuneError(f"MLflow experiment {self.experiment!r} in {self.tracking_uri} "
                              "is deleted; restore it or choose another experiment")
        self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _search(self, filter_string: str, order_by: list[str] | None = None) -> list[Run]:
        """All active runs of the experiment matching ``filter_string`` (every page).

        Through this tracker's own client, not ``mlflow.search_runs``: that one reads the
        process-wide tracking URI, and one process may hold trackers of several stores (a
        driver and its tests, a report over sweeps); the Run objects it pages through are
        also what :func:`~kdtune.runs.is_final` and the sweep queries read before any frame
        is built."""
        exp_id = self._existing_experiment_id()
        if exp_id is None:
            return []
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([exp_id], filter_string, max_results=_PAGE,
                                           order_by=order_by, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _log(self, run_id: str, *, epochs: Sequence[tuple[int, Mapping[str, float]]] = (),
             params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
             timestamp: int | None = None) -> None:
        """One ``log_batch`` call: metrics as ``(step, metrics)`` pairs, params and tags
        (MLflow splits it only past 100 params/tags)."""
        from mlflow.entities import Metric, Param, RunTag

        ts = int(time.time() * 1000) if timestamp is None else timestamp
        encoded = {k: encode_param(v) for k, v in (params or {}).items()}
        for key, text in encoded.items():
            if len(text) > _MAX_PARAM_LEN:  # MLflow would cut it silently
                raise KdtuneError(f"value of {key!r} is {len(text)} characters long; MLflow "
                                  f"params hold at most {_MAX_PARAM_LEN}")
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), ts, int(step)) for step, metrics in epochs
                     for k, v in metrics.items() if v is not None],
            params=[Param(k, v) for k, v in encoded.items()],
            tags=[RunTag(k, _tag_value(v)) for k, v in (tags or {}).items()],
        )

    # -- sweeps ---------------------------------------------------------------------------
    def find_sweep(self, name: str) -> str | None:
        """Run id of the sweep's parent run, or None (never creates the store)."""
        run = self._parent_run(name)
        return run.info.run_id if run is not None else None

    def _parent_run(self, name: str) -> Run | None:
        """The sweep's parent run as a search returns it (params, tags, metrics), or None."""
        quoted = _quote(name)
        if quoted is None:
            return None
        runs = self._search(f"tags.`{TAG_KIND}` = 'sweep' AND tags.`{TAG_SWEEP}` = {quoted}",
                            order_by=["attributes.start_time ASC"])
        return runs[0] if runs else None

    def start_sweep(self, name: str, *, tags: Mapping[str, str] = {},
                    params: Mapping[str, Any] = {}) -> str:
        """Create the parent run of a new sweep; the name must not be taken."""
        if not name or _quote(name) is None or any(c in name for c in "\n\r/\\"):
            raise KdtuneError(f"invalid sweep name {name!r}: use letters, digits, '-', '_', '.'")
        if len(name) > 250:
            raise KdtuneError(f"sweep name too long ({len(name)} characters, at most 250)")
        exp_id = self.ensure_experiment()
        if self.find_sweep(name) is not None:
            raise KdtuneError(f"sweep {name!r} already exists in {self.tracking_uri}; resume it "
                              f"with `kdtune resume {name}` or choose another --name")
        all_tags = {k: _tag_value(v) for k, v in tags.items()}
        all_tags.update({TAG_SWEEP: name, TAG_KIND: "sweep"})
        run = self.client.create_run(exp_id, tags=all_tags, run_name=name)
        if params:
            self._log(run.info.run_id, params=params)
        return run.info.run_id

    def end_sweep(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark a sweep's parent run as ended (FINISHED, KILLED or FAILED)."""
        self.client.set_terminated(run_id, status=_check_status(status))

    def sweep_run(self, name: str) -> Run:
        """The parent run of sweep ``name``; a one-line error listing sweeps if unknown."""
        run = self._parent_run(name)
        if run is None:
            raise self._unknown_sweep(name)
        return run

    def sweep_and_children(self, name: str) -> tuple[Run, list[Run]]:
        """The parent run of sweep ``name`` and its child runs (trials and finalist runs),
        oldest first, from one search; a one-line error listing sweeps if unknown."""
        quoted = _quote(name)
        runs = self._search(f"tags.`{TAG_SWEEP}` = {quoted}",
                            order_by=["attributes.start_time ASC"]) if quoted else []
        parent = next((r for r in runs if r.data.tags.get(TAG_KIND) == "sweep"), None)
        if parent is None:
            raise self._unknown_sweep(name)
        return parent, [r for r in runs if r.data.tags.get(TAG_PARENT) == parent.info.run_id]

    def _unknown_sweep(self, name: str) -> KdtuneError:
        names = self.sweep_names()
        if not names:
            return KdtuneError(f"no sweep {name!r} in {self.tracking_uri}: it holds no sweeps "
                               "yet; run `kdtune search` first or pass --mlflow-uri")
        shown = ", ".join(names[:10]) + (f" (and {len(names) - 10} more)" if len(names) > 10
                                          else "")
        hint = did_you_mean(name, names)
        return KdtuneError(f"no sweep {name!r} in {self.tracking_uri}{hint}; existing sweeps: "
                           f"{shown}")

    def _sweep_runs(self) -> list[Run]:
        return self._search(f"tags.`{TAG_KIND}` = 'sweep'",
                            order_by=["attributes.start_time DESC"])

    def sweep_names(self) -> list[str]:
        """Sweep names, newest first."""
        return [r.data.tags.get(TAG_SWEEP, r.info.run_name) for r in self._sweep_runs()]

    def all_runs(self) -> list[Run]:
        """Every active run of the experiment (sweeps, trials, finalist runs), one search."""
        return self._search("")

    def list_sweeps(self) -> pd.DataFrame:
        """One row per sweep, newest first: name, run_id, status, times, params.*, tags.*."""
        frame = runs_frame(self._sweep_runs())
        frame.insert(0, "name", frame["run_name"])
        return frame.drop(columns="run_name")

    def objective(self, name: str) -> tuple[list[str], list[str]]:
        """The sweep's objective (metrics, modes) as stored on its parent run."""
        return objective_of(self.sweep_run(name), name)

    def driver_runs(self, parent_id: str) -> list[dict[str, Any]]:
        """The runs of kdtune drivers that trained for the sweep, as recorded on its parent run
        (see ``TAG_DRIVER_RUNS``)."""
        text = self.client.get_run(parent_id).data.tags.get(TAG_DRIVER_RUNS)
        return json.loads(text) if text else []

    def start_driver_run(self, parent_id: str, kind: str) -> int:
        """Record on the parent run that a driver starts training for the sweep (``kind``:
        one of ``DRIVER_RUN_KINDS``); returns its index for :meth:`end_driver_run`."""
        if kind not in DRIVER_RUN_KINDS:
            raise ValueError(f"driver run kind must be one of {DRIVER_RUN_KINDS}, not {kind!r}")
        runs = self.driver_runs(parent_id)
        runs.append({"kind": kind, "start": int(time.time() * 1000), "end": None})
        self._set_driver_runs(parent_id, runs)
        return len(runs) - 1

    def end_driver_run(self, parent_id: str, index: int) -> None:
        """Record the end of the driver run :meth:`start_driver_run` returned ``index`` for."""
        runs = self.driver_runs(parent_id)
        if 0 <= index < len(runs):
            runs[index]["end"] = int(time.time() * 1000)
            self._set_driver_runs(parent_id, runs)

    def _set_driver_runs(self, parent_id: str, runs: list[dict[str, Any]]) -> None:
        text = json.dumps(runs, separators=(",", ":"))
        while len(text) > _MAX_TAG_LEN and len(runs) > 2:
            # a very long history: the two oldest entries become one that keeps their sum
            a, b = runs[0], runs[1]
            seconds = sum(driver_run_seconds(x) or 0.0 for x in (a, b))
            runs[:2] = [{"kind": "earlier", "start": a["start"], "end": b["end"] or b["start"],
                         "seconds": seconds}]
            text = json.dumps(runs, separators=(",", ":"))
        self.client.set_tag(parent_id, TAG_DRIVER_RUNS, text)

    # -- trials ---------------------------------------------------------------------------
    def find_trial(self, parent_id: str, trial_id: str) -> str | None:
        """Run id of the child run for Ray trial ``trial_id`` under ``parent_id``, if any."""
        quoted = _quote(trial_id)
        if quoted is None:
            raise ValueError(f"trial id {trial_id!r} holds both kinds of quote")
        runs = self._search(f"tags.`{TAG_PARENT}` = '{parent_id}' AND "
                            f"tags.`{TAG_TRIAL_ID}` = {quoted}",
                            order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def start_trial(self, parent_id: str, trial_id: str, *, params: Mapping[str, Any],
                    config_yaml: str | None = None, tags: Mapping[str, str] = {}) -> str:
        """Create (or reopen) the child run of one trial and log its config.

        Idempotent: if the parent already has a child for ``trial_id`` (a restored trial), it is
        set RUNNING again and returned; params it already has keep their first value.
        ``config_yaml`` is stored as the artifact ``config.yaml``.
        """
        parent = self.client.get_run(parent_id)
        sweep = parent.data.tags.get(TAG_SWEEP, parent.info.run_name)
        self._experiment_id = self._experiment_id or parent.info.experiment_id
        run_id = self.find_trial(parent_id, trial_id)
        all_tags = {k: _tag_value(v) for k, v in tags.items()}
        all_tags.update({TAG_PARENT: parent_id, TAG_KIND: "trial", TAG_SWEEP: sweep,
                         TAG_TRIAL_ID: trial_id})
        if run_id is None:
            run = self.client.create_run(parent.info.experiment_id, tags=all_tags,
                                         run_name=all_tags.get(TAG_READABLE_ID,
                                                               f"{sweep}/{trial_id}"))
            run_id = run.info.run_id
            self._log(run_id, params=params)
        else:
            self.client.update_run(run_id, status="RUNNING")
            logged = self.client.get_run(run_id).data.params
            self._log(run_id, params={k: v for k, v in params.items() if k not in logged},
                      tags=all_tags)
        if config_yaml is not None:
            self.client.log_text(run_id, config_yaml, "config.yaml")
        return run_id

    def log_epochs(self, run_id: str, epochs: Sequence[tuple[int, Mapping[str, float]]], *,
                   tags: Mapping[str, str] = {}, timestamp: int | None = None) -> None:
        """Log epochs' metrics (``(step, metrics)`` pairs) and ``tags`` in one ``log_batch``
        call. With the same ``timestamp``, logging the same epochs again adds nothing: MLflow
        keeps one row per (metric, step, timestamp, value)."""
        self._log(run_id, epochs=epochs, tags=tags, timestamp=timestamp)

    def end_trial(self, run_id: str, status: str, *, metrics: Mapping[str, float] = {},
                  tags: Mapping[str, str] = {}, timestamp: int | None = None) -> None:
        """Log final metrics and tags in one batch and close the run.

        Final metrics are logged at the run's last step with a later timestamp, so they are
        the run's summary values (``metrics.*`` in searches) even where a per-epoch series of
        the same name exists. KILLED runs should carry ``kdtune.rung``, FAILED ones
        ``kdtune.error`` (long values are cut to MLflow's tag limit).
        """
        status = _check_status(status)
        if metrics or tags:
            step, ts = 0, int(time.time() * 1000) if timestamp is None else timestamp
            if metrics:
                logged = self.client.get_metric_history(run_id, "val_accuracy")
                if logged:
                    step = max(m.step for m in logged)
                    ts = max(ts, max(m.timestamp for m in logged) + 1)
            self._log(run_id, epochs=[(step, metrics)], tags=tags, timestamp=ts)
        self.client.set_terminated(run_id, status=status)

    def log_artifact(self, run_id: str, local_path: str | Path,
                     artifact_path: str | None = None) -> None:
        """Copy a file (or a folder's contents) into the run's artifacts."""
        path = Path(local_path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    # -- queries --------------------------------------------------------------------------
    def trial_runs(self, sweep: str) -> pd.DataFrame:
        """All search trials of a sweep (its child runs but the finalist runs), oldest first:
        one row each with run_id, trial_id, status, times, ``params.*``, ``metrics.*``
        (final/latest values) and ``tags.*``."""
        return self._children(sweep, final=False)

    def final_runs(self, sweep: str) -> pd.DataFrame:
        """The finalist runs of a sweep (``kdtune finalize``), as :meth:`trial_runs`."""
        return self._children(sweep, final=True)

    def child_runs(self, sweep: str) -> pd.DataFrame:
        """Every child run of a sweep: its trials and its finalist runs."""
        return self._children(sweep, final=None)

    def _children(self, sweep: str, *, final: bool | None) -> pd.DataFrame:
        parent_id = self.find_sweep(sweep)
        if parent_id is None:
            raise self._unknown_sweep(sweep)
        runs = self._search(f"tags.`{TAG_PARENT}` = '{parent_id}'",
                            order_by=["attributes.start_time ASC"])
        return runs_frame([r for r in runs if final is None or is_final(r) == final])

    def all_trial_runs(self) -> pd.DataFrame:
        """Every search trial of every sweep in the experiment, with ``parent_id`` (one
        query)."""
        frame = runs_frame([r for r in self._search(f"tags.`{TAG_KIND}` = 'trial'")
                             if not is_final(r)])
        frame["parent_id"] = frame.get(f"tags.{TAG_PARENT}")
        return frame

    def best_configs(self, sweep: str, *, metrics: Sequence[str], modes: Sequence[str],
                     top: int | None = None,
                     status: Sequence[str] = ("FINISHED",)) -> pd.DataFrame:
        """The best trials of a sweep, as :func:`rank_trials` ranks them."""
        return rank_trials(self.trial_runs(sweep), sweep, metrics=metrics, modes=modes,
                           top=top, status=status)


def best_configs(name: str, *, metric: str | Sequence[str] | None = None,
                 mode: str | Sequence[str] | None = None, top: int | None = 10,
                 tracking_uri: str | None = None,
                 experiment: str = DEFAULT_EXPERIMENT) -> pd.DataFrame:
    """The best finished trials of sweep ``name`` as a DataFrame, read from MLflow alone.

    ``metric``/``mode`` default to the sweep's own objective (several metrics give the Pareto
    front); a comma-separated string counts as a list. A metric given without a mode takes the
    sweep's mode for it, else its natural one (max for accuracies and speedup, min for
    params, FLOPs, latency, time, losses). ``tracking_uri`` defaults to the local store in
    the current folder. :func:`kdtune.runs.run_config` rebuilds a row's config.
    """
    uri = tracking_uri or default_tracking_uri(default_store())
    require_store(uri)
    return sweep_best(Tracker(uri, experiment), name, metric=metric, mode=mode, top=top)[1]


def sweep_best(tracker: Tracker, name: str, *, metric: str | Sequence[str] | None = None,
               mode: str | Sequence[str] | None = None, top: int | None = 10
               ) -> tuple[Run, pd.DataFrame]:
    """The parent run of sweep ``name`` and its best finished trials (see
    :func:`best_configs`), from one search of the store."""
    parent, children = tracker.sweep_and_children(name)
    trials = runs_frame([r for r in children if not is_final(r)])
    metrics, modes = as_list(metric), as_list(mode)
    if not metrics or not modes:
        try:
            sweep_metrics, sweep_modes = objective_of(parent, name)
        except KdtuneError:
            if not metrics:
                raise
            sweep_metrics, sweep_modes = [], []
        metrics = metrics or sweep_metrics
        if not modes:
            known = dict(zip(sweep_metrics, sweep_modes, strict=True))
            modes = [known.get(m) or MODES.get(m, "") for m in metrics]
            missing = [m for m, d in zip(metrics, modes, strict=True) if not d]
            if missing:
                # a typo of a logged metric: say so rather than ask for a mode
                check_logged(trials, missing, name, typos_only=True)
                raise KdtuneError(f"no default mode for metric {missing[0]!r}; pass --mode "
                                  "max or --mode min")
    if len(modes) == 1 and len(metrics) > 1:
        modes = modes * len(metrics)
    return parent, rank_trials(trials, name, metrics=metrics, modes=modes, top=top)


# -- helpers ------------------------------------------------------------------------------
def _quote(value: str) -> str | None:
    """A filter-string literal for ``value``; None if it holds both kinds of quote."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def _tag_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= _MAX_TAG_LEN else text[:_MAX_TAG_LEN - 3] + "..."


def _check_status(status: str) -> str:
    if status not in TRIAL_STATUSES:
        raise ValueError(f"run status must be one of {TRIAL_STATUSES}, not {status!r}")
    return status


