"""Driver-side Tune callbacks: the MLflow record of each trial, and the progress display.

Trials never talk to MLflow: importing MLflow and opening its store costs seconds per process,
more than a small trial trains. The driver keeps one client and writes every trial's child
run from here. A child run is found again by its Ray trial id, so a trial resumed after a
crash continues the same MLflow run and nothing is duplicated.

A trial waits for the driver after every epoch (Ray hands it the next step only once the
result is processed), so the writes go through one writer thread: a trial's run is created
and its epochs are logged while Ray goes on. Each epoch is written before Ray registers that
epoch's checkpoint (``on_checkpoint`` waits for the writer), and a run is closed before Ray
counts its trial ended.

A tracking server that stops answering does not stop the sweep: each write is retried with
backoff (:func:`kdtune.urls.call_with_retries`) and its timestamp is fixed when it is queued,
so a write sent twice adds nothing. While the writer is behind (``on_checkpoint`` waited
:data:`WAIT_S` seconds in vain), ``on_checkpoint`` no longer waits: trials go on and their
epochs queue up in order. A trial that continues from a checkpoint sends the metrics of every
epoch its checkpoint holds (:data:`~kdtune.tune.trainable.HISTORY_KEY`), and the epochs its run
lacks are written from them, so a driver killed while MLflow was behind leaves no gap either.
A trial's end still waits for its run to be closed.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import yaml
from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from kdtune.config import saved_config
from kdtune.mlflow_store import transient_tracking_error
from kdtune.tracking import Tracker
from kdtune.tune.searcher import stopped_early
from kdtune.tune.study import SweepStudy
from kdtune.tune.trainable import (
    EPOCH_KEY,
    FAILURE_KEY,
    HISTORY_KEY,
    PLANNED_KEY,
    TRACEBACK_KEY,
    TrialSettings,
)
from kdtune.urls import call_with_retries, redact
from kdtune.vocabulary import (
    EPOCH_METRICS,
    FINAL_METRICS,
    STAGE_FINAL,
    TAG_ERROR,
    TAG_FINALIST,
    TAG_NODE,
    TAG_READABLE_ID,
    TAG_RETRIES,
    TAG_ROLE,
    TAG_RUNG,
    TAG_STAGE,
    TAG_SWEEP,
    TAG_TRACEBACK,
    TAG_UNUSED,
    finalist_label,
    trial_label,
)

#: MLflow statuses of a trial that ended for good (a FAILED trial that Ray restores retries).
ENDED = ("FINISHED", "KILLED")
#: Seconds ``on_checkpoint`` waits for the writer before it lets trials go on without it.
WAIT_S = 10.0


class TrialLabels:
    """The readable ids of a sweep's Ray trials (:func:`~kdtune.vocabulary.trial_label`,
    :func:`~kdtune.vocabulary.finalist_label`): a search trial's holds its Optuna trial
    number, which the searcher tagged with the Ray trial id when it asked; a finalist run's
    holds the readable id of the trial it re-trains and its seed (its ``job``)."""

    def __init__(self, sweep: str, study: SweepStudy | None) -> None:
        self.sweep, self.study = sweep, study
        self.numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number

    def __getstate__(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "study": self.study}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["sweep"], state["study"])

    def __call__(self, trial_id: str, config: Mapping[str, Any]) -> str:
        job = config.get("job")
        if job is not None:
            return finalist_label(job["finalist"], job["role"], int(job["seed"]))
        if self.study is None:
            return trial_id
        if trial_id not in self.numbers:  # read the study again: a trial asked since
            self.numbers.update({t: ft.number for t, ft in self.study.sweep_trials().items()})
        return trial_label(self.sweep, self.numbers[trial_id]) if trial_id in self.numbers \
            else trial_id


def describe(settings: TrialSettings, trial_config: Mapping[str, Any]
             ) -> tuple[dict[str, Any], dict[str, str]]:
    """The full config a trial trains with (first seed, plus the list of seeds) and the tags of
    its run: the config keys its methods do not read; for a finalist run (``kdtune
    finalize``), whose config holds one ``job`` (a configuration, one seed, its role and
    finalist), also its stage, role and finalist."""
    from kdtune.methods import unused_keys

    job = trial_config.get("job")
    if job is None:
        config = settings.config(trial_config, settings.seeds[0]).to_dict()
        config["seeds"] = list(settings.seeds)
        tags = {}
    else:
        config = settings.config(job["params"], int(job["seed"])).to_dict()
        config["seeds"] = [int(job["seed"])]
        tags = {TAG_STAGE: STAGE_FINAL, TAG_ROLE: job["role"], TAG_FINALIST: job["finalist"]}
    tags[TAG_UNUSED] = ",".join(unused_keys(config["method"], config["feature_method"]))
    return config, tags


class MlflowTrials(Callback):
    """One MLflow child run per trial under the sweep's parent run.

    Idempotent across a driver crash: a restored trial reopens its own run; epochs already
    logged are not logged again; a run that had ended (FINISHED or KILLED) before the crash is
    left exactly as it was, whatever the restored trial reports again.

    Writes run in order on one writer thread (see the module docstring); :meth:`flush` waits
    for them. A failed write is raised by the next callback (or by :meth:`flush`).
    """

    def __init__(self, tracker: Tracker, parent_id: str, sweep: str,
                 settings: TrialSettings, study: SweepStudy | None = None) -> None:
        self.tracker, self.parent_id, self.sweep = tracker, parent_id, sweep
        self.settings = settings
        self.labels = TrialLabels(sweep, study)  # used on the writer thread only
        # read and written on the writer thread only
        self.run_ids: dict[str, str] = {}
        self.last_step: dict[str, int] = {}  # run id -> last epoch logged
        self.closed: set[str] = set()  # trial ids whose run ended before a restore
        self._writer: ThreadPoolExecutor | None = None
        self._pending: deque[Future[object]] = deque()
        self._behind = False  # on_checkpoint gave up waiting; trials go on without it

    def __getstate__(self) -> dict[str, Any]:  # run ids are looked up again after a restore
        return {**self.__dict__, "run_ids": {}, "last_step": {}, "closed": set(),
                "_writer": None, "_pending": deque(), "_behind": False}

    # -- the writer thread ------------------------------------------------------------------
    def _submit(self, write: Callable[..., object], *args: Any) -> None:
        while self._pending and self._pending[0].done():  # raise an earlier failure now
            self._pending.popleft().result()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdtune-mlflow")
        self._pending.append(self._writer.submit(self._retried, write, *args))

    def _retried(self, write: Callable[..., object], *args: Any) -> object:
        return call_with_retries(write, *args, transient=transient_tracking_error,
                                 what=f"MLflow at {redact(self.tracker.tracking_uri)}")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is in MLflow (at most ``timeout`` seconds); raise the
        first that failed. False if writes are still queued when the time is up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = wait([self._pending[0]], timeout=left)
            if not done:
                return False
            self._pending.popleft().result()
        return True

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        # Ray registers the checkpoint (and deletes the previous one) right after this
        try:
            if self._behind:  # trials go on; wait again once the writer caught up
                if self.flush(timeout=0):
                    self._behind = False
                    _notice(f"MLflow at {redact(self.tracker.tracking_uri)} has every "
                            "record again")
                return
            if not self.flush(timeout=WAIT_S):
                self._behind = True
                _notice(f"MLflow at {redact(self.tracker.tracking_uri)} is slow or away: "
                        "trials go on, their records follow when it answers")
        except Exception as exc:  # Ray only logs what this raises: keep it for the next call
            failed: Future[object] = Future()
            failed.set_exception(exc)
            self._pending.appendleft(failed)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    # -- callbacks (main thread): queue the writes ------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(self.run_id, _TrialView.of(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._submit(self._log_result, _TrialView.of(trial), dict(result), _now_ms())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(self._end, _TrialView.of(trial), dict(trial.last_result or {}), _now_ms())
        self.flush()  # closed before Ray's next snapshot counts the trial ended

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # the trial's worker or node died: Ray starts it again from its last checkpoint
        self._submit(self._retried_tag, _TrialView.of(trial), int(trial.num_failures))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(self._fail, _TrialView.of(trial), *_error_of(trial))
        self.flush()

    # -- the writes (writer thread) -----------------------------------------------------------
    def run_id(self, trial: _TrialView) -> str:
        """The trial's child run: created, reopened after a restore, or already known."""
        if trial.trial_id not in self.run_ids:
            existing = self.tracker.find_trial(self.parent_id, trial.trial_id)
            if existing is not None:  # a restored trial
                run = self.tracker.client.get_run(existing)
                if run.info.status in ENDED:
                    self.closed.add(trial.trial_id)
                    self.run_ids[trial.trial_id] = existing
                    return existing
                history = self.tracker.client.get_metric_history(existing, "val_accuracy")
                self.last_step[existing] = max((m.step for m in history), default=0)
            config, tags = describe(self.settings, trial.config)
            tags[TAG_READABLE_ID] = self.labels(trial.trial_id, trial.config)
            self.run_ids[trial.trial_id] = self.tracker.start_trial(
                self.parent_id, trial.trial_id, params=config,
                config_yaml=yaml.safe_dump(saved_config(config), sort_keys=False),
                tags={TAG_SWEEP: self.sweep, **tags})
        return self.run_ids[trial.trial_id]

    def _log_result(self, trial: _TrialView, result: Mapping[str, Any], ts: int) -> None:
        run_id = self.run_id(trial)
        if trial.trial_id not in self.closed:
            self._log_epochs(run_id, result, ts)

    def _log_epochs(self, run_id: str, result: Mapping[str, Any], ts: int) -> None:
        """The result's epoch, and the epochs before it that the run lacks (from the history
        a trial sends after it continued from a checkpoint)."""
        if EPOCH_KEY not in result:
            return
        last = self.last_step.get(run_id, 0)
        epochs = {int(h[EPOCH_KEY]): h for h in result.get(HISTORY_KEY) or ()}
        epochs[int(result[EPOCH_KEY])] = result
        new = [(step, {k: m[k] for k in EPOCH_METRICS if k in m})
               for step, m in sorted(epochs.items()) if step > last]
        if not new:  # replayed after a restore
            return
        tags = {TAG_NODE: result["node_id"]} if result.get("node_id") and last == 0 else {}
        self.tracker.log_epochs(run_id, new, tags=tags, timestamp=ts)
        self.last_step[run_id] = new[-1][0]

    def _end(self, trial: _TrialView, result: Mapping[str, Any], ts: int) -> None:
        run_id = self.run_id(trial)
        if trial.trial_id in self.closed:
            return
        self._log_epochs(run_id, result, ts)  # normally logged already by on_trial_result
        if FAILURE_KEY in result:  # the trial failed by itself: not retried
            self.tracker.end_trial(run_id, "FAILED", timestamp=ts, tags={
                TAG_ERROR: result[FAILURE_KEY], TAG_TRACEBACK: result.get(TRACEBACK_KEY, "")})
            return
        # per-epoch metrics are already in the history at the last step: not again
        final = {k: result[k] for k in FINAL_METRICS if k in result and k not in EPOCH_METRICS}
        tags = {TAG_NODE: result["node_id"]} if result.get("node_id") else {}
        if stopped_early(result):
            tags[TAG_RUNG] = str(int(result[EPOCH_KEY]))
            self.tracker.end_trial(run_id, "KILLED", metrics=final, tags=tags, timestamp=ts)
        else:
            self.tracker.end_trial(run_id, "FINISHED", metrics=final, tags=tags, timestamp=ts)

    def _retried_tag(self, trial: _TrialView, failures: int) -> None:
        run_id = self.run_id(trial)
        if trial.trial_id not in self.closed:
            self.tracker.client.set_tag(run_id, TAG_RETRIES, str(failures))

    def _fail(self, trial: _TrialView, error: str, trace: str) -> None:
        run_id = self.run_id(trial)
        if trial.trial_id not in self.closed:
            self.tracker.end_trial(run_id, "FAILED", tags={TAG_ERROR: error,
                                                           TAG_TRACEBACK: trace})


@dataclass(frozen=True)
class _TrialView:
    """What the writer thread needs of a Ray trial, copied when the callback is called (Ray
    goes on changing the trial meanwhile)."""

    trial_id: str
    config: Mapping[str, Any]

    @classmethod
    def of(cls, trial: Any) -> _TrialView:
        return cls(trial.trial_id, dict(trial.config))


def _error_of(trial: Any) -> tuple[str, str]:
    """The last line of the trial's error (the exception) and the whole error text."""
    try:
        with open(trial.error_file) as f:
            text = f.read()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return (lines[-1][:2000] if lines else "trial failed"), text
    except (OSError, TypeError):
        return "trial failed (no error file)", ""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _notice(message: str) -> None:
    print(f"kdtune: {message}", file=sys.stderr, flush=True)


class Progress(Callback):
    """Live table of trials (a line per finished trial when not on a terminal)."""

    def __init__(self, metric: str, mode: str, labels: TrialLabels | None = None, *,
                 console: Console | None = None) -> None:
        self.metric, self.mode, self.labels = metric, mode, labels
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.rows: dict[str, dict[str, Any]] = {}
        self.live: Live | None = None
        self.started = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:  # consoles and live displays do not pickle
        return {"metric": self.metric, "mode": self.mode, "labels": self.labels}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["metric"], state["mode"], state.get("labels"))

    def setup(self, **info: Any) -> None:
        if self.console.is_terminal:
            self.live = Live(self.table(), console=self.console, refresh_per_second=2,
                             transient=False)
            self.live.start()

    def _update(self, trial: Any, status: str, result: Mapping[str, Any] | None = None) -> None:
        row = self.rows.get(trial.trial_id)
        if row is None:
            label = self.labels(trial.trial_id, trial.config) if self.labels else trial.trial_id
            row = self.rows[trial.trial_id] = {"id": label, "config": _summary(trial.config)}
        row["status"] = status
        if result:
            row["epoch"] = f"{int(result.get(EPOCH_KEY, 0))}/{int(result.get(PLANNED_KEY, 0))}"
            if self.metric in result:
                row["value"] = float(result[self.metric])
        if self.live is not None:
            self.live.update(self.table())

    def best(self) -> tuple[str, dict[str, Any]] | None:
        scored = [(k, r) for k, r in self.rows.items() if "value" in r]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda kv: kv[1]["value"])

    def table(self) -> Table:
        elapsed = time.monotonic() - self.started
        table = Table(title=f"kdtune sweep - {len(self.rows)} trials, {elapsed:.0f}s",
                      caption=self._best_caption())
        for col in ("trial", "config", "epoch", self.metric, "status"):
            table.add_column(col)
        for row in self.rows.values():
            value = f"{row['value']:.4f}" if "value" in row else "-"
            table.add_row(row["id"], row["config"], row.get("epoch", "-"), value, row["status"])
        return table

    def _best_caption(self) -> str:
        best = self.best()
        if best is None:
            return ""
        return (f"best so far: {best[1]['id']} {self.metric}={best[1]['value']:.4f}  "
                f"{best[1]['config']}")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trial, "RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._update(trial, "RUNNING", result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        status = f"STOPPED@{int(result.get(EPOCH_KEY, 0))}" if stopped_early(result) else "DONE"
        if FAILURE_KEY in result:
            status = "FAILED"
        self._update(trial, status, result)
        self._line(trial.trial_id, result.get(FAILURE_KEY))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trial, "RETRY")
        self._line(trial.trial_id, "its worker died; it continues from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trial, "FAILED")
        self._line(trial.trial_id, _error_of(trial)[0])

    def _line(self, trial_id: str, note: str | None = None) -> None:
        if self.live is None:
            row = self.rows[trial_id]
            value = f"{row['value']:.4f}" if "value" in row else "-"
            self.console.print(f"{row['id']} {row['status']:<11} {self.metric}={value}  "
                               f"{row['config']}" + (f"  ({note})" if note else ""))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def _summary(params: Mapping[str, Any]) -> str:
    job = params.get("job")
    if job is not None:  # a finalist run (kdtune finalize)
        return str(job["role"])
    parts = []
    for key, value in params.items():
        if isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, list | tuple):
            value = "-".join(map(str, value))
        parts.append(f"{key}={value}")
    return " ".join(parts)
