"""Early stopping for a sweep: asynchronous successive halving whose rungs compare before they promote.

Ray's ASHA decides a trial at a rung against the trials recorded there before it. The first trial
to reach a rung has nothing to be compared with, so it passes, and so do the first few behind it:
in a sweep of 8 trials on 2 slots, the first two (often the seed recipe, which learns nothing) ran
every epoch. `ComparingASHA` keeps ASHA's rule (stop below the top 1/reduction_factor of the
trials recorded at the rung) but a trial that reaches a rung with fewer than `compare_at_least - 1`
others recorded there waits, paused (its checkpoint saved, its slot freed), until enough arrive;
then it and they are judged together, and the waiter is resumed or stopped. When nothing else is
running or pending, no other trial can come (the sweep is at its end), so the waiters are judged
among what is recorded and, without anyone to compare with, resumed.

A waiting trial does not hold a slot: `SlotLimiter`, in place of Tune's max_concurrent_trials, counts
only trials that are not waiting, so a new trial starts in its place, and on a single slot (one GPU)
the first trial to reach a rung is still compared with the next.

A waiter judged to trail is stopped once its pause has saved its checkpoint (the adapter its MLflow run
keeps); it reaches Optuna with its last report, as a trial stopped at a rung does
(orchestrator/sweep.py LinkedOptunaSearch).
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

# Trials waiting at a rung, by trial id, in this (the driver's) process: what the scheduler and the
# limiter share. Not in either object: Tune pickles the searcher and the scheduler apart, so a
# reference from one to the other would be a stale copy in a resumed sweep.
WAITING: set[str] = set()


def rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which trials are compared: grace_period * reduction_factor**k, below max_t."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1e-9) + 1
    # Ray's ASHA records a trial at the first epoch >= grace_period * reduction_factor**k: a ceiling.
    return sorted({math.ceil(grace_period * reduction_factor**k - 1e-9) for k in range(count)} - {max_t})


class ComparingASHA(FIFOScheduler):
    """ASHA (one bracket) that never lets a trial pass a rung uncompared while others may still come.

    `metric` / `mode` are what the rungs compare, not necessarily what the sweep optimises (Tune's
    TuneConfig metric stays the searcher's and the leaderboard's); `first_rung` = (metric, mode), when
    given, is what the first rung compares instead. Trials are only ever compared with others at the
    same rung, so the rungs may compare different things.
    """

    def __init__(self, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float,
                 compare_at_least: int = 2, first_rung: tuple[str, str] | None = None,
                 time_attr: str = "training_iteration"):
        super().__init__()
        self.max_t, self.reduction_factor, self.time_attr = max_t, reduction_factor, time_attr
        self.compare_at_least = compare_at_least
        self.recorded: dict[int, dict[str, float]] = {rung: {} for rung in rungs(grace_period, reduction_factor, max_t)}
        # rung -> (metric, +1 to maximise or -1 to minimise)
        self.compared = {rung: (metric, 1.0 if mode == "max" else -1.0) for rung in self.recorded}
        if first_rung and self.recorded:
            self.compared[min(self.recorded)] = (first_rung[0], 1.0 if first_rung[1] == "max" else -1.0)
        self.waiting: dict[str, int] = {}  # trial id -> the rung it waits at (paused); judged, it leaves
        # Waiters judged to stop, stopped once their pause has saved: Tune registers a paused trial's checkpoint
        # when the save completes, and the sweep's MLflow run takes its adapter from it.
        self.doomed: set[str] = set()
        self.stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # keeps its own metric: the sweep's (TuneConfig's) is the searcher's

    # -- the rule ------------------------------------------------------------------------------------------

    def _trails(self, trial_id: str, rung: int) -> bool:
        """ASHA's rule: below the (1 - 1/reduction_factor) quantile of the others recorded at the rung."""
        recorded = self.recorded[rung]
        others = [score for other, score in recorded.items() if other != trial_id]
        if not others:
            return False
        return recorded[trial_id] < np.nanpercentile(others, (1 - 1 / self.reduction_factor) * 100)

    def _judge_waiters(self, tune_controller, rung: int, force: bool = False) -> None:
        for trial in [t for t in tune_controller.get_trials() if self.waiting.get(t.trial_id) == rung]:
            if not force and len(self.recorded[rung]) < self.compare_at_least:
                continue
            del self.waiting[trial.trial_id]
            if self._trails(trial.trial_id, rung):
                self.stopped += 1
                self.doomed.add(trial.trial_id)
            else:  # it runs again: choose_trial_to_run picks it
                WAITING.discard(trial.trial_id)
        self._stop_doomed(tune_controller)

    def _stop_doomed(self, tune_controller) -> None:
        if not self.doomed:  # called on every step of Tune's loop (choose_trial_to_run)
            return
        for trial in tune_controller.get_trials():
            if trial.trial_id in self.doomed and trial.status == Trial.PAUSED and not trial.is_saving:
                self.doomed.discard(trial.trial_id)
                WAITING.discard(trial.trial_id)
                tune_controller.stop_trial(trial)

    # -- Tune's hooks ----------------------------------------------------------------------------------------

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if self.time_attr not in result:
            return TrialScheduler.CONTINUE
        if result[self.time_attr] >= self.max_t:
            return TrialScheduler.STOP
        reached = [rung for rung in self.recorded if result[self.time_attr] >= rung
                   and trial.trial_id not in self.recorded[rung]]
        if not reached:
            return TrialScheduler.CONTINUE
        rung = max(reached)  # a trial resumed past several rungs is judged once, at the highest
        metric, sign = self.compared[rung]
        if metric not in result:
            return TrialScheduler.CONTINUE
        self.recorded[rung][trial.trial_id] = sign * float(result[metric])
        self._judge_waiters(tune_controller, rung)
        if len(self.recorded[rung]) < self.compare_at_least:
            self.waiting[trial.trial_id] = rung
            WAITING.add(trial.trial_id)
            return TrialScheduler.PAUSE
        if self._trails(trial.trial_id, rung):
            self.stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        self._stop_doomed(tune_controller)
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        if self.waiting and not any(trial.status == Trial.RUNNING for trial in trials):
            # Nothing running or pending: nothing else can reach the waiters' rungs.
            for rung in sorted(set(self.waiting.values())):
                self._judge_waiters(tune_controller, rung, force=True)
        for trial in trials:
            if trial.status == Trial.PAUSED and trial.trial_id not in {*self.waiting, *self.doomed}:
                return trial
        return None

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self.waiting.pop(trial.trial_id, None)
        self.doomed.discard(trial.trial_id)
        WAITING.discard(trial.trial_id)

    def debug_string(self) -> str:
        cutoffs = ", ".join(f"epoch {rung}: {len(recorded)} recorded" for rung, recorded in self.recorded.items())
        return f"ComparingASHA: {self.stopped} stopped, {len(self.waiting)} waiting; {cutoffs}"


class SlotLimiter(ConcurrencyLimiter):
    """Tune's max_concurrent_trials, except that trials waiting at a rung (paused, no resources held) do
    not count: the searcher suggests a new trial in a waiter's place."""

    def suggest(self, trial_id: str) -> dict | None:
        if len(self.live_trials - WAITING) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion
