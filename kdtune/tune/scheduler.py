"""ASHA whose rungs survive a driver crash.

Ray does not checkpoint the scheduler (ray issue 30838): after ``Tuner.restore`` ASHA starts
with empty rungs and lets weak trials through. :class:`PersistentASHA` writes its rungs to a
small JSON file in the experiment folder after every change and reads them back on restore.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from kdtune.tune.storage import read_text, write_text


class PersistentASHA(ASHAScheduler):
    """``ASHAScheduler`` + rung state in ``state_path`` (JSON, written atomically)."""

    def __init__(self, *args: Any, state_path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state_path = str(state_path)
        self._loaded = False

    # -- persistence ---------------------------------------------------------------------------
    def rungs(self) -> list[list[dict[str, Any]]]:
        """Per bracket, per rung: ``{"milestone": m, "recorded": {trial_id: reward}}``."""
        return [[{"milestone": m, "recorded": dict(rec)} for m, rec in b._rungs]
                for b in self._brackets]

    def _save(self) -> None:
        write_text(self.state_path,
                   json.dumps({"brackets": self.rungs(), "num_stopped": self._num_stopped}))

    def _load_once(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        text = read_text(self.state_path)
        if text is None:
            return
        state = json.loads(text)
        for bracket, saved in zip(self._brackets, state["brackets"], strict=True):
            for (milestone, recorded), rung in zip(bracket._rungs, saved, strict=True):
                if rung["milestone"] == milestone:
                    recorded.update(rung["recorded"])
        self._num_stopped = int(state.get("num_stopped", 0))

    # -- scheduler hooks -----------------------------------------------------------------------
    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load_once()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load_once()
        if trial.trial_id not in self._trial_info:  # a restored trial Ray did not re-add
            super().on_trial_add(tune_controller, trial)
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._trial_info.pop(trial.trial_id, None)
