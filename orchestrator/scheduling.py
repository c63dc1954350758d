"""Early stopping for a sweep, from `sweep.asha` in one place: asynchronous successive halving whose rungs
compare before they promote.

`EarlyStopping.of(config)` works the config out once: the rungs (the epochs at which trials are
compared, where the sweep also scores the general probe), what each rung compares, the scheduler, and
the searcher as early stopping needs it. orchestrator/sweep.py, the sweep's MLflow note and the bench
all read the rungs from it.

Ray's ASHA decides a trial at a rung against the trials recorded there before it. The first trial
to reach a rung has nothing to be compared with, so it passes, and so do the first few behind it:
in a sweep of 8 trials on 2 slots, the first two (often the seed recipe, which learns nothing) ran
every epoch. `ComparingASHA` keeps ASHA's rule (stop below the top 1/reduction_factor of the
trials recorded at the rung) but a trial that reaches a rung with fewer than `compare_at_least - 1`
others recorded there waits, paused (its checkpoint saved, its slot freed), until enough arrive;
then it and they are judged together, and the waiter is resumed or stopped. When nothing else is
running or pending, no other trial can come (the sweep is at its end), so the waiters are judged
among what is recorded and, without anyone to compare with, resumed.

Waiting only pays when another trial can use the freed slot. When none can (the sweep has started all its
trials and none is pending or paused to resume), a first arrival would idle its slot until a running trial
reaches the rung (measured: a sweep's overhead went from 8% of wall without early stopping to 24% with it).
So it runs on instead, provisionally: when enough others are recorded at its rung it is judged as a waiter
would be, and one judged to trail is stopped at its next report (one epoch spent on a slot that had no
other use).

A waiting trial does not hold a slot: `SlotLimiter`, in place of Tune's max_concurrent_trials, counts
only trials that are not waiting, so a new trial starts in its place, and on a single slot (one GPU)
the first trial to reach a rung is still compared with the next. The scheduler tells the limiter who
waits through the searcher hooks Tune has for it (`on_pause` / `on_unpause`, as Ray's HyperBandForBOHB
tells BOHB), reaching the limiter through the controller it is handed each call: neither object keeps
a reference to the other, which would be a stale copy after `--resume` (Tune pickles the scheduler
into tuner.pkl and saves the searcher's state apart, restoring it with `set_state`). A resumed sweep
starts with no waiters on either side: Tune's scheduler state is not saved, and the trials that were
paused at a rung are pending again.

A waiter judged to trail is stopped once its pause has saved its checkpoint (the adapter its MLflow run
keeps). Tune stops a paused trial without a result; `LastReport` hands the searcher its last report
instead, so it reaches Optuna as a trial stopped at a rung does (COMPLETE with its last objective), not
as PRUNED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from orchestrator.run_record import OBJECTIVE, VAL_ANSWER_LOSS

if TYPE_CHECKING:
    from orchestrator.config import AshaConfig, ExperimentConfig

# compare_by auto's rung value: the val answers' loss, a trial that breaks a floor ranked after every trial that keeps
# them. No trial reports it: a rung works it out from the loss and the objective (rung_value).
LOSS_WITHIN_FLOORS = "val_answer_loss_within_floors"
# Above any answer loss: what a broken floor adds to the loss at a rung (the worse the breach, the more).
BROKEN_FLOOR = 1e6


def mode_of(metric: str) -> str:
    """The objective is maximised; losses are minimised."""
    return "max" if metric == OBJECTIVE else "min"


def rung_value(result: dict, metric: str) -> float | None:
    """What a rung records of a trial's `result` for `metric` (None: the result lacks it).

    LOSS_WITHIN_FLOORS is the val answer loss while the trial keeps every floor. A broken floor (old facts
    under sweep.retention_floor, general knowledge under sweep.general_floor) makes the objective negative,
    the worst breach (orchestrator.trainable.objective), and ranks the trial after all that keep them, the
    more forgotten the lower. A rung is a scored epoch, so the objective there is the rung's own."""
    if metric != LOSS_WITHIN_FLOORS:
        return float(result[metric]) if metric in result else None
    if VAL_ANSWER_LOSS not in result or OBJECTIVE not in result:
        return None
    objective = float(result[OBJECTIVE])
    return float(result[VAL_ANSWER_LOSS]) if objective >= 0 else BROKEN_FLOOR * (1 - objective)


def rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which trials are compared: grace_period * reduction_factor**k, below max_t."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1e-9) + 1
    # Ray's ASHA records a trial at the first epoch >= grace_period * reduction_factor**k: a ceiling.
    return sorted({math.ceil(grace_period * reduction_factor**k - 1e-9) for k in range(count)} - {max_t})


# sweep.asha.compare_by -> (what the first rung compares, what the later ones compare); read-only, as the module
# keeps no state
COMPARED_BY = MappingProxyType({
    # The val answer loss at every rung, within the floors. It falls from the first epoch, while exact recall still
    # ties most trials at 0 or jumps on a few lucky guesses (a bad trial recalled 6 of 60 val questions after one
    # epoch, a good one 9); and at the later rungs it still picks the trials that end best. Replayed over four
    # tiny-model sweeps without early stopping (bench/RESULTS.md section 4), the loss at every rung (grace 1,
    # reduction 4, waiting) ended 0.000, 0.039, 0.000 and 0.000 below the sweeps' best val recall; recall at the later
    # rungs (loss_then_objective, auto before) 0.006, 0.039, 0.189 and 0.000: at epoch 4 recall can favour the trials
    # that learn fast and then stall. On SmolLM2's curves the two picked alike in every set-up (RESULTS.md, "Early
    # stopping on SmolLM2's own curves").
    "auto": (LOSS_WITHIN_FLOORS, LOSS_WITHIN_FLOORS),
    "loss_then_objective": (VAL_ANSWER_LOSS, OBJECTIVE),
    "val_answer_loss": (VAL_ANSWER_LOSS, VAL_ANSWER_LOSS),
    "objective": (OBJECTIVE, OBJECTIVE),
})


def rung_metrics(config: ExperimentConfig) -> tuple[str, str]:
    """What early stopping compares (sweep.asha.compare_by): (at the first rung, at the later ones)."""
    return COMPARED_BY[config.sweep.asha.compare_by]


@dataclass(frozen=True)
class EarlyStopping:
    """`sweep.asha` worked out for one sweep. Off (`enabled: false`): no rungs, Tune's FIFO scheduler and
    its plain concurrency limit."""

    asha: AshaConfig
    max_t: int  # training.epochs: a trial's last epoch, past every rung
    rungs: list[int]  # the epochs at which trials are compared, ascending; empty when off
    compared: tuple[str, str]  # the metric the first rung compares, and the one the later rungs compare
    num_samples: int | None = None  # the sweep's trials (sweep.num_samples)

    @classmethod
    def of(cls, config: ExperimentConfig) -> EarlyStopping:
        asha, max_t = config.sweep.asha, config.training.epochs
        at = rungs(asha.grace_period, asha.reduction_factor, max_t) if asha.enabled else []
        return cls(asha, max_t, at, rung_metrics(config), config.sweep.num_samples)

    def scheduler(self) -> TrialScheduler:
        if not self.asha.enabled:
            return FIFOScheduler()
        first, later = self.compared
        return ComparingASHA(later, mode_of(later), max_t=self.max_t, grace_period=self.asha.grace_period,
                             reduction_factor=self.asha.reduction_factor, compare_at_least=self.asha.compare_at_least,
                             first_rung=(first, mode_of(first)), num_samples=self.num_samples)

    def searcher(self, searcher: Searcher, slots: int | None) -> Searcher:
        """`searcher` as the sweep runs it: at most `slots` trials at a time (Tune's max_concurrent_trials,
        applied here because the sweep's SignedSearch hides the searcher from Tune's own); with early
        stopping, waiters neither hold a slot nor reach the searcher without their last report."""
        if not self.asha.enabled:
            return ConcurrencyLimiter(searcher, slots) if slots else searcher
        searcher = LastReport(searcher)
        return SlotLimiter(searcher, slots) if slots else searcher


class ComparingASHA(FIFOScheduler):
    """ASHA (one bracket) that never lets a trial pass a rung uncompared while others may still come.

    `metric` / `mode` are what the rungs compare, not necessarily what the sweep optimises (Tune's
    TuneConfig metric stays the searcher's and the leaderboard's); `first_rung` = (metric, mode), when
    given, is what the first rung compares instead. Trials are only ever compared with others at the
    same rung, so the rungs may compare different things.
    """

    def __init__(self, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float,
                 compare_at_least: int = 2, first_rung: tuple[str, str] | None = None,
                 time_attr: str = "training_iteration", num_samples: int | None = None):
        super().__init__()
        self.max_t, self.reduction_factor, self.time_attr = max_t, reduction_factor, time_attr
        self.compare_at_least = compare_at_least
        self.num_samples = num_samples  # the sweep's trials: none new once this many exist (None: always may come)
        self.recorded: dict[int, dict[str, float]] = {rung: {} for rung in rungs(grace_period, reduction_factor, max_t)}
        # rung -> (metric, +1 to maximise or -1 to minimise)
        self.compared = {rung: (metric, 1.0 if mode == "max" else -1.0) for rung in self.recorded}
        if first_rung and self.recorded:
            self.compared[min(self.recorded)] = (first_rung[0], 1.0 if first_rung[1] == "max" else -1.0)
        self.waiting: dict[str, int] = {}  # trial id -> the rung it waits at (paused); judged, it leaves
        # Waiters judged to stop, stopped once their pause has saved: Tune registers a paused trial's checkpoint
        # when the save completes, and the sweep's MLflow run takes its adapter from it.
        self.doomed: set[str] = set()
        self.provisional: dict[str, int] = {}  # trial id -> the rung it passed uncompared, running on (docstring)
        self.condemned: set[str] = set()  # provisional trials judged to trail: stopped at their next report
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

    def _judge_provisional(self, rung: int) -> None:
        if len(self.recorded[rung]) < self.compare_at_least:
            return
        for trial_id in [trial_id for trial_id, at in self.provisional.items() if at == rung]:
            del self.provisional[trial_id]
            if self._trails(trial_id, rung):
                self.condemned.add(trial_id)

    def _slot_would_idle(self, tune_controller, waiter: Trial) -> bool:
        """Whether no other trial could run in `waiter`'s slot: all the sweep's trials exist and none is
        pending, or paused and free to resume."""
        trials = tune_controller.get_trials()
        if self.num_samples is None or len(trials) < self.num_samples:
            return False
        held = {*self.waiting, *self.doomed}
        return not any(trial.status == Trial.PENDING or (trial.status == Trial.PAUSED and trial.trial_id not in held)
                       for trial in trials if trial is not waiter)

    def _judge_waiters(self, tune_controller, rung: int, force: bool = False) -> None:
        for trial in [t for t in tune_controller.get_trials() if self.waiting.get(t.trial_id) == rung]:
            if not force and len(self.recorded[rung]) < self.compare_at_least:
                continue
            del self.waiting[trial.trial_id]
            if self._trails(trial.trial_id, rung):
                self.stopped += 1
                self.doomed.add(trial.trial_id)
            else:  # it runs again: choose_trial_to_run picks it
                _tell_slots(tune_controller, trial.trial_id, waits=False)
        self._stop_doomed(tune_controller)

    def _stop_doomed(self, tune_controller) -> None:
        if not self.doomed:  # called on every step of Tune's loop (choose_trial_to_run)
            return
        for trial in tune_controller.get_trials():
            if trial.trial_id in self.doomed and trial.status == Trial.PAUSED and not trial.is_saving:
                self.doomed.discard(trial.trial_id)
                _tell_slots(tune_controller, trial.trial_id, waits=False)
                tune_controller.stop_trial(trial)

    # -- Tune's hooks ----------------------------------------------------------------------------------------

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if self.time_attr not in result:
            return TrialScheduler.CONTINUE
        if trial.trial_id in self.condemned:
            self.condemned.discard(trial.trial_id)
            self.stopped += 1
            return TrialScheduler.STOP
        if result[self.time_attr] >= self.max_t:
            return TrialScheduler.STOP
        reached = [rung for rung in self.recorded if result[self.time_attr] >= rung
                   and trial.trial_id not in self.recorded[rung]]
        if not reached:
            return TrialScheduler.CONTINUE
        rung = max(reached)  # a trial resumed past several rungs is judged once, at the highest
        metric, sign = self.compared[rung]
        value = rung_value(result, metric)
        if value is None:
            return TrialScheduler.CONTINUE
        self.recorded[rung][trial.trial_id] = sign * value
        self._judge_provisional(rung)
        self._judge_waiters(tune_controller, rung)
        if len(self.recorded[rung]) < self.compare_at_least:
            if self._slot_would_idle(tune_controller, trial):
                self.provisional[trial.trial_id] = rung
                return TrialScheduler.CONTINUE
            self.waiting[trial.trial_id] = rung
            _tell_slots(tune_controller, trial.trial_id, waits=True)
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
        self.provisional.pop(trial.trial_id, None)
        self.doomed.discard(trial.trial_id)
        self.condemned.discard(trial.trial_id)
        _tell_slots(tune_controller, trial.trial_id, waits=False)

    def debug_string(self) -> str:
        cutoffs = ", ".join(f"epoch {rung}: {len(recorded)} recorded" for rung, recorded in self.recorded.items())
        return (f"ComparingASHA: {self.stopped} stopped, {len(self.waiting)} waiting, {len(self.provisional)} running on "
                f"uncompared; {cutoffs}")


def _tell_slots(tune_controller, trial_id: str, waits: bool) -> None:
    """Tell the sweep's SlotLimiter that a trial waits at a rung, or (resumed, stopped or removed) holds its
    slot again until Tune completes it. The limiter is looked up in the searcher Tune runs now, on each
    call, never kept (module docstring); a sweep without a slot limit has none."""
    searcher = getattr(tune_controller, "search_alg", None)
    while searcher is not None and not isinstance(searcher, SlotLimiter):
        searcher = getattr(searcher, "searcher", None)
    if searcher is not None:
        (searcher.on_pause if waits else searcher.on_unpause)(trial_id)


class SlotLimiter(ConcurrencyLimiter):
    """Tune's max_concurrent_trials, except that trials waiting at a rung (paused, no resources held) do
    not count: the searcher suggests a new trial in a waiter's place. ComparingASHA says who waits."""

    def __init__(self, searcher: Searcher, max_concurrent: int):
        super().__init__(searcher, max_concurrent)
        self.waiting: set[str] = set()

    def on_pause(self, trial_id: str) -> None:
        self.waiting.add(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        self.waiting.discard(trial_id)

    def suggest(self, trial_id: str) -> dict | None:
        if len(self.live_trials - self.waiting) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion

    def get_state(self) -> dict:
        # Saved without waiters, as the scheduler's state is not saved at all: a resumed sweep's trials that
        # waited are pending again, and each holds its slot.
        return {**super().get_state(), "waiting": set()}


class LastReport(Searcher):
    """The searcher below, told of a trial Tune stops without a result (a waiter stopped at its rung) with
    the objective it last reported, as Tune tells it of a trial stopped as it reports."""

    def __init__(self, searcher: Searcher):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.last: dict[str, float] = {}  # trial id -> its last reported objective, until it completes

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | None:
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.last[trial_id] = result[self.metric]
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        last = self.last.pop(trial_id, None)
        if result is None and not error and last is not None:
            result = {self.metric: last}
        self.searcher.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    def get_state(self) -> dict:  # as Tune's wrappers: the searcher below saves itself (SearchGenerator.save_to_dir)
        return {"last": dict(self.last)}

    def set_state(self, state: dict) -> None:
        self.last = state["last"]
