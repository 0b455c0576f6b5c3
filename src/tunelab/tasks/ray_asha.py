"""ASHA for ``tunelab sweep --engine ray --asha`` whose rungs outlive the sweep's driver.

Tune's experiment state leaves the scheduler out (``TuneController.__getstate__`` drops it), and
``Tuner.restore`` takes the scheduler pickled when the sweep began, with empty rungs. A sweep continued after
its driver died therefore forgot every validation loss it had seen: the first trial to run after the restore
had nothing to be compared with and ran to the end, however badly it lagged, and which trial that is depends
on the order Tune requeues them in. This scheduler writes its rungs beside the experiment after every
decision and reads them back when the restored sweep adds its trials, so a trial is judged against every
trial that reported before the crash, and one it stopped stays stopped if it is started again.

Imports Ray: only ``tunelab.tasks.ray_sweep`` imports this module, once it knows Ray is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tunelab.paths import atomic_write_text

# In a folder of the Tune experiment's own: a restored Tuner copies the experiment folder's top-level .json and
# .pkl files to its staging folder and uploads them back at each checkpoint, so a file there would be
# overwritten with the copy made when the sweep was restored.
RUNGS_FILE = "scheduler/asha_rungs.json"


class DurableASHAScheduler(ASHAScheduler):
    """Ray's ASHA, its rungs saved to ``state_path`` after every decision and restored from it.

    Args:
        state_path: the JSON file that holds the rungs (read when the first trial is added, if it exists).
        **asha: ``ASHAScheduler``'s arguments.
    """

    def __init__(self, state_path: str | Path, **asha: Any):
        super().__init__(**asha)
        self._state_path = str(state_path)
        self._stopped: set[str] = set()
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = Path(self._state_path)
        if not path.is_file():
            return
        state = json.loads(path.read_text(encoding="utf-8"))
        for bracket, rungs in zip(self._brackets, state["brackets"], strict=True):
            by_milestone = {float(milestone): recorded for milestone, recorded in rungs}
            for milestone, recorded in bracket._rungs:
                recorded.update(by_milestone.get(float(milestone), {}))
        self._trial_info.update({trial_id: self._brackets[index] for trial_id, index in state["trials"].items()})
        self._stopped.update(state["stopped"])
        self._num_stopped = state["num_stopped"]

    def _save(self) -> None:
        state = {
            "brackets": [[[milestone, recorded] for milestone, recorded in bracket._rungs] for bracket in self._brackets],
            "trials": {trial_id: self._brackets.index(bracket) for trial_id, bracket in self._trial_info.items()},
            "stopped": sorted(self._stopped),
            "num_stopped": self._num_stopped,
        }
        atomic_write_text(Path(self._state_path), json.dumps(state))

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        if trial.trial_id not in self._trial_info:  # a restored trial keeps its bracket
            super().on_trial_add(tune_controller, trial)
            self._save()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load()
        if trial.trial_id in self._stopped:
            # Stopped before the crash, started again because Tune's own state had not recorded the stop yet.
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self._stopped.add(trial.trial_id)
        self._save()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._load()
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        self._trial_info.pop(trial.trial_id, None)
        self._save()
