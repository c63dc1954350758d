"""Early-stopping set-ups replayed on recorded learning curves: many set-ups, the same trials.

A sweep without early stopping records every trial's metrics at every epoch. Replaying those curves
through orchestrator.scheduling.ComparingASHA (the sweep's own scheduler code, driven here by a
stand-in for Tune's controller) says what each set-up would have stopped, how many trial-epochs it
would have spent and which trial it would have kept, with the sampler's choices held fixed: the
differences between set-ups are the schedulers', not TPE's. The real sweeps (bench/early_stopping.py)
check the chosen set-up end to end.

Simplifications, stated in RESULTS.md: every epoch takes one time unit (prefix and LoRA trials run
at the same pace), trials start in the recorded order, and a trial stopped early changes nothing
that the sampler suggests next (in a real sweep TPE sees it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from orchestrator.run_record import VAL_EXACT_RECALL
from orchestrator.scheduling import COMPARED_BY, ComparingASHA, SlotLimiter, mode_of


class FakeTrial:
    """What ComparingASHA reads of a Tune trial."""

    def __init__(self, trial_id: str):
        self.trial_id, self.status, self.is_saving = trial_id, Trial.PENDING, False

    def __repr__(self) -> str:
        return f"FakeTrial({self.trial_id}, {self.status})"


class FakeController:
    """What ComparingASHA calls on Tune's controller; stop_trial does what Tune's does to a scheduler and
    a searcher (`search_alg`, as Tune's controller names it: None when the sweep has no slot limit)."""

    def __init__(self, trials: list[FakeTrial], scheduler, search_alg: Searcher | None = None):
        self.trials, self.scheduler, self.search_alg, self.stopped = trials, scheduler, search_alg, []

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def stop_trial(self, trial: FakeTrial) -> None:
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
        self.complete(trial)
        self.stopped.append(trial)

    def complete(self, trial: FakeTrial) -> None:
        trial.status = Trial.TERMINATED
        if self.search_alg is not None:
            self.search_alg.on_trial_complete(trial.trial_id)


class NextTrial(Searcher):
    """The sampler, as the replay sees it: a next trial whenever the slots allow one (the recorded order)."""

    def suggest(self, trial_id: str) -> dict:
        return {}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


@dataclass(frozen=True)
class SetUp:
    name: str
    compare_by: str  # the metric the rungs compare (scheduling.rung_value works it out of a curve's metrics)
    grace_period: int
    reduction_factor: float
    compare_at_least: int
    first_rung_by: str | None = None  # what the first rung compares instead, if not compare_by

    def scheduler(self, max_t: int, num_samples: int | None = None) -> ComparingASHA:
        first = (self.first_rung_by, mode_of(self.first_rung_by)) if self.first_rung_by else None
        return ComparingASHA(self.compare_by, mode_of(self.compare_by), max_t=max_t, grace_period=self.grace_period,
                             reduction_factor=self.reduction_factor, compare_at_least=self.compare_at_least,
                             first_rung=first, num_samples=num_samples)


def replay(curves: list[dict[str, list[float]]], set_up: SetUp, slots: int) -> dict:
    """Run `curves` (one per trial, in start order: metric -> value at epochs 1..max_t) through the set-up
    with `slots` trials at a time; what it spends and what it keeps."""
    max_t = min(len(curve[VAL_EXACT_RECALL]) for curve in curves)
    scheduler = set_up.scheduler(max_t, len(curves))
    limiter = SlotLimiter(NextTrial(), slots)  # the sweep's own: a trial waiting at a rung frees its slot
    trials: list[FakeTrial] = []
    controller = FakeController(trials, scheduler, limiter)
    done = {}  # trial index -> epochs it ran
    epochs = [0] * len(curves)
    spent, order = 0, []  # order: (cumulative trial-epochs, val recall) as each report arrives
    while len(done) < len(curves):
        while len(trials) < len(curves) and limiter.suggest(str(len(trials))) is not None:
            trials.append(FakeTrial(str(len(trials))))
        while sum(t.status == Trial.RUNNING for t in trials) < slots:
            chosen = scheduler.choose_trial_to_run(controller)
            if chosen is None:
                break
            chosen.status = Trial.RUNNING
        running = [t for t in trials if t.status == Trial.RUNNING]
        if not running:
            raise RuntimeError(f"{set_up.name}: no trial can run ({trials})")
        for trial in running:
            if trial.status != Trial.RUNNING:  # stopped by a decision earlier in this time unit
                continue
            index = int(trial.trial_id)
            epochs[index] += 1
            spent += 1
            curve = curves[index]
            order.append((spent, curve[VAL_EXACT_RECALL][epochs[index] - 1]))
            result = {"training_iteration": epochs[index], **{k: v[epochs[index] - 1] for k, v in curve.items()}}
            decision = scheduler.on_trial_result(controller, trial, result)
            if decision == TrialScheduler.STOP or epochs[index] >= max_t:
                controller.complete(trial)
            elif decision == TrialScheduler.PAUSE:
                trial.status = Trial.PAUSED
        done = {int(t.trial_id): epochs[int(t.trial_id)] for t in trials if t.status == Trial.TERMINATED}
    finals = [curves[i][VAL_EXACT_RECALL][n - 1] for i, n in done.items()]
    best = max(finals)
    return {"trial_epochs": spent, "best_val": best, "epochs_to_best": epochs_to_reach(order, best),
            "epochs_per_trial": [done[i] for i in range(len(curves))]}


def epochs_to_reach(order: list[tuple[int, float]], target: float) -> int | None:
    """Trial-epochs spent when a val recall of at least `target` was first reported (None: never)."""
    return next((spent for spent, value in order if value >= target - 1e-9), None)


# Every sweep.asha.compare_by (the sweep's own COMPARED_BY), grace, reduction factor, and waiting or not.
SET_UPS = [
    SetUp(f"{by} g{grace} rf{factor:g}{' wait' if wait > 1 else ''}", later, grace, factor, wait,
          first if first != later else None)
    for by, (first, later) in COMPARED_BY.items()
    for grace, factor in ((1, 2), (1, 3), (1, 4), (2, 2), (2, 3), (2, 4))
    for wait in (1, 2)
]


def compare(curve_sets: list[list[dict[str, list[float]]]], slots: int) -> list[dict]:
    """Every set-up on every recorded sweep: means over the sweeps, and each sweep's figures."""
    rows = []
    for set_up in SET_UPS:
        runs = [replay(curves, set_up, slots) for curves in curve_sets]
        full = [len(curves) * min(len(c[VAL_EXACT_RECALL]) for c in curves) for curves in curve_sets]
        flat_best = [max(c[VAL_EXACT_RECALL][-1] for c in curves) for curves in curve_sets]
        rows.append({
            "set_up": set_up.name, **{k: getattr(set_up, k) for k in
                                      ("compare_by", "grace_period", "reduction_factor", "compare_at_least")},
            "trial_epochs": sum(r["trial_epochs"] for r in runs) / len(runs),
            "saving": sum(full) / sum(r["trial_epochs"] for r in runs),
            "best_val": sum(r["best_val"] for r in runs) / len(runs),
            "best_val_loss_vs_full": sum(f - r["best_val"] for f, r in zip(flat_best, runs)) / len(runs),
            "runs": runs,
        })
    return rows
