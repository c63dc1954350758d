"""ComparingASHA's rule, driven directly: Ray's ASHA when nobody need wait; a first arrival waits for company
and gives its slot away (SlotLimiter)."""

import random
from pathlib import Path

import pytest
import ray.cloudpickle as pickle  # as Tune writes tuner.pkl
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator

from bench.scheduler_replay import FakeController, FakeTrial, NextTrial
from orchestrator import scheduling
from orchestrator.scheduling import (LOSS_WITHIN_FLOORS, ComparingASHA, EarlyStopping, LastReport, SlotLimiter,
                                     mode_of, rung_value, rungs)

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


def loss_asha(**kwargs) -> ComparingASHA:
    settings = {"max_t": 20, "grace_period": 2, "reduction_factor": 4, "compare_at_least": 2, **kwargs}
    return ComparingASHA("val_answer_loss", "min", **settings)


def report(scheduler, controller, trial, epoch: int, loss: float) -> str:
    """A result of a trial that keeps the floors (objective >= 0)."""
    trial.status = Trial.RUNNING
    return scheduler.on_trial_result(controller, trial, {"training_iteration": epoch, "val_answer_loss": loss,
                                                         "objective": 0.0})


@pytest.mark.parametrize(("grace", "factor", "max_t", "expected"), [
    (2, 3, 20, [2, 6, 18]), (2, 4, 20, [2, 8]), (1, 2, 16, [1, 2, 4, 8]), (2, 2.5, 20, [2, 5, 13]), (4, 4, 16, [4])])
def test_rungs_are_where_rays_asha_records_trials(grace, factor, max_t, expected):
    assert rungs(grace, factor, max_t) == expected


@pytest.mark.parametrize("seed", range(5))
def test_with_nobody_to_wait_for_it_decides_as_rays_asha(seed):
    """compare_at_least=1 is Ray's AsyncHyperBandScheduler (one bracket), decision for decision."""
    rng = random.Random(seed)
    factor, grace, max_t = rng.choice([2, 3, 4]), rng.choice([1, 2]), 12
    ours = ComparingASHA("score", "max", max_t=max_t, grace_period=grace, reduction_factor=factor, compare_at_least=1)
    ray = AsyncHyperBandScheduler(metric="score", mode="max", max_t=max_t, grace_period=grace,
                                  reduction_factor=factor)
    trials = [FakeTrial(f"t{i}") for i in range(10)]
    for trial in trials:
        ray.on_trial_add(None, trial)
    epochs, live = dict.fromkeys(range(10), 0), set(range(10))
    decisions = []
    while live:
        index = rng.choice(sorted(live))
        epochs[index] += 1
        result = {"training_iteration": epochs[index], "score": rng.random()}
        expected = ray.on_trial_result(None, trials[index], result)
        decisions.append(expected)
        assert ours.on_trial_result(FakeController(trials, ours), trials[index], result) == expected
        if expected == STOP:
            live.discard(index)
    assert STOP in decisions and decisions.count(STOP) < len(decisions)


def test_a_trial_that_arrives_first_but_trails_is_stopped_when_the_next_arrives():
    ray = AsyncHyperBandScheduler(metric="val_answer_loss", mode="min", max_t=20, grace_period=2, reduction_factor=4)
    scheduler = loss_asha()
    first, second = FakeTrial("seed-recipe"), FakeTrial("good")
    limiter = SlotLimiter(NextTrial(), max_concurrent=2)
    controller = FakeController([first, second], scheduler, limiter)
    ray.on_trial_add(None, first)
    assert ray.on_trial_result(None, first, {"training_iteration": 2, "val_answer_loss": 7.8}) == CONTINUE

    assert report(scheduler, controller, first, 1, 7.8) == CONTINUE
    assert report(scheduler, controller, first, 2, 7.8) == PAUSE  # Ray's ASHA lets it through
    first.status = Trial.PAUSED
    assert limiter.waiting == {"seed-recipe"}
    assert report(scheduler, controller, second, 2, 2.6) == CONTINUE
    assert first.status == Trial.TERMINATED and controller.stopped == [first]
    assert limiter.waiting == set()


def test_a_first_arrival_that_leads_runs_on_and_the_trailing_one_stops():
    scheduler = loss_asha()
    first, second = FakeTrial("good"), FakeTrial("worse")
    controller = FakeController([first, second], scheduler)
    assert report(scheduler, controller, first, 2, 2.6) == PAUSE
    first.status = Trial.PAUSED
    second.status = Trial.RUNNING
    assert scheduler.choose_trial_to_run(controller) is None  # the waiter stays paused while company may come
    assert report(scheduler, controller, second, 2, 4.4) == STOP
    second.status = Trial.TERMINATED
    assert controller.stopped == [] and scheduler.choose_trial_to_run(controller) is first


def test_a_waiter_is_resumed_when_nothing_else_can_reach_its_rung():
    scheduler = loss_asha()
    alone = FakeTrial("alone")
    limiter = SlotLimiter(NextTrial(), max_concurrent=1)
    controller = FakeController([alone], scheduler, limiter)
    assert report(scheduler, controller, alone, 2, 5.0) == PAUSE
    alone.status = Trial.PAUSED
    assert limiter.waiting == {"alone"}
    assert scheduler.choose_trial_to_run(controller) is alone
    assert scheduler.waiting == {} and limiter.waiting == set()


def test_a_pending_trial_runs_before_a_waiter_is_given_up_on():
    scheduler = loss_asha()
    waiter, pending = FakeTrial("waiter"), FakeTrial("pending")
    controller = FakeController([waiter, pending], scheduler)
    assert report(scheduler, controller, waiter, 2, 5.0) == PAUSE
    waiter.status, pending.status = Trial.PAUSED, Trial.PENDING
    assert scheduler.choose_trial_to_run(controller) is pending
    assert scheduler.waiting == {"waiter": 2}


def test_slots_held_by_waiting_trials_are_free_for_new_ones():
    limiter = SlotLimiter(NextTrial(), max_concurrent=1)
    assert limiter.suggest("a") == {}
    assert limiter.suggest("b") is None  # "a" holds the only slot
    limiter.on_pause("a")
    assert limiter.suggest("b") == {}
    assert limiter.suggest("c") is None


def test_the_first_rung_compares_the_early_signal_and_the_later_ones_the_objective():
    """compare_by: loss_then_objective. After one epoch a lucky guess can lift recall; the loss is what tells
    then. Later, recall decides, and a lower loss with fewer right answers does not win."""
    scheduler = ComparingASHA("objective", "max", max_t=20, grace_period=1, reduction_factor=4,
                              first_rung=("val_answer_loss", "min"))
    learns, lucky, later = FakeTrial("learns"), FakeTrial("lucky"), FakeTrial("later")
    controller = FakeController([learns, lucky, later], scheduler)

    def result(trial, epoch, loss, objective):
        trial.status = Trial.RUNNING
        return scheduler.on_trial_result(controller, trial, {"training_iteration": epoch, "val_answer_loss": loss,
                                                             "objective": objective})

    assert result(learns, 1, 3.0, 0.0) == PAUSE
    learns.status = Trial.PAUSED
    assert result(lucky, 1, 6.0, 0.15) == STOP  # more val recall after one epoch, but a loss twice as high
    assert result(later, 1, 2.8, 0.0) == CONTINUE
    assert result(later, 4, 0.9, 0.10) == PAUSE
    later.status = Trial.PAUSED
    assert result(learns, 4, 1.2, 0.30) == CONTINUE  # a higher loss, but more answers right
    assert controller.stopped == [later]


def test_auto_compares_the_loss_at_every_rung_and_ranks_a_broken_floor_after_every_kept_one():
    """compare_by: auto. The lower loss passes at a later rung too, whatever recall says; a trial whose objective
    is negative (a floor broken: orchestrator.trainable.objective) trails any that keeps the floors, the worse
    breach the lower, however low its loss."""
    scheduler = ComparingASHA(LOSS_WITHIN_FLOORS, mode_of(LOSS_WITHIN_FLOORS), max_t=20, grace_period=1,
                              reduction_factor=2)
    assert list(scheduler.recorded) == [1, 2, 4, 8, 16]
    trials = {name: FakeTrial(name) for name in ("steady", "fast", "forgets", "forgets_more", "late")}
    controller = FakeController(list(trials.values()), scheduler)

    def result(name, epoch, loss, objective):
        trials[name].status = Trial.RUNNING
        return scheduler.on_trial_result(controller, trials[name], {"training_iteration": epoch,
                                                                     "val_answer_loss": loss, "objective": objective})

    assert result("fast", 1, 2.0, 0.2) == PAUSE
    trials["fast"].status = Trial.PAUSED
    assert result("steady", 1, 1.9, 0.0) == CONTINUE  # the lower loss, though it recalls nothing yet
    assert controller.stopped == [trials["fast"]]
    assert result("forgets", 1, 0.5, -0.10) == STOP  # the lowest loss, but a floor broken
    assert result("forgets_more", 1, 0.4, -0.30) == STOP
    assert scheduler.recorded[1]["forgets_more"] < scheduler.recorded[1]["forgets"] < scheduler.recorded[1]["fast"]
    assert result("late", 1, 1.8, 0.1) == CONTINUE
    assert result("late", 2, 1.5, 0.1) == PAUSE
    trials["late"].status = Trial.PAUSED
    assert result("steady", 2, 1.2, 0.0) == CONTINUE  # still the lower loss at a later rung, with less recall
    assert controller.stopped[-1] is trials["late"]


def test_a_rung_without_its_metrics_in_the_result_records_nothing():
    assert rung_value({"val_answer_loss": 1.0}, LOSS_WITHIN_FLOORS) is None
    assert rung_value({"objective": 0.5}, "val_answer_loss") is None
    assert rung_value({"val_answer_loss": 1.0, "objective": 0.0}, LOSS_WITHIN_FLOORS) == 1.0


# -- EarlyStopping: sweep.asha in, Tune's pieces out -----------------------------------------------------------


class Told(NextTrial):
    """A searcher that keeps what Tune told it of each completed trial."""

    def __init__(self):
        super().__init__(metric="objective", mode="max")
        self.completed: dict[str, dict | None] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.completed[trial_id] = result


def demo(*overrides: str):
    from orchestrator.config import load_experiment
    from tests.sweep_support import DEMO

    return load_experiment(DEMO, list(overrides))


def test_the_builder_derives_rungs_metrics_scheduler_and_limiter_from_the_config():
    stopping = EarlyStopping.of(demo("sweep.max_concurrent_trials=2"))
    assert stopping.rungs == [1, 4, 16] == rungs(1, 4, 20)  # the demo: grace 1, factor 4, 20 epochs
    assert stopping.compared == (LOSS_WITHIN_FLOORS, LOSS_WITHIN_FLOORS)  # compare_by: auto
    scheduler = stopping.scheduler()
    assert isinstance(scheduler, ComparingASHA) and list(scheduler.recorded) == stopping.rungs
    assert scheduler.compared == {rung: (LOSS_WITHIN_FLOORS, -1.0) for rung in (1, 4, 16)}
    before = EarlyStopping.of(demo("sweep.asha.compare_by=loss_then_objective")).scheduler()
    assert before.compared == {1: ("val_answer_loss", -1.0), 4: ("objective", 1.0), 16: ("objective", 1.0)}
    optuna = Told()
    limiter = stopping.searcher(optuna, 2)
    assert isinstance(limiter, SlotLimiter) and limiter.max_concurrent == 2
    assert isinstance(limiter.searcher, LastReport) and limiter.searcher.searcher is optuna
    assert isinstance(stopping.searcher(optuna, None), LastReport)  # no slot limit: Tune's resources decide

    incremental = EarlyStopping.of(demo().model_copy(update={"init_adapter": Path("adapter")}))
    assert incremental.compared == (LOSS_WITHIN_FLOORS, LOSS_WITHIN_FLOORS)  # the retention floor through the objective


def test_without_early_stopping_the_sweep_has_tunes_own_pieces_and_no_rungs():
    stopping = EarlyStopping.of(demo("sweep.asha.enabled=false"))
    optuna = Told()
    assert stopping.rungs == [] and isinstance(stopping.scheduler(), FIFOScheduler)
    assert type(stopping.searcher(optuna, 2)) is ConcurrencyLimiter and stopping.searcher(optuna, None) is optuna


def test_early_stopping_keeps_no_state_in_its_module():
    """Who waits lives in the scheduler and the limiter Tune runs, nowhere else (the old module-global set
    outlived sweeps in one process and needed clearing between them)."""
    kept = {name: value for name, value in vars(scheduling).items()
            if not name.startswith("__") and isinstance(value, (set, dict, list))}
    assert kept == {}


def test_a_waiter_stopped_at_its_rung_reaches_the_searcher_with_its_last_report():
    optuna = Told()
    searcher = LastReport(optuna)
    searcher.on_trial_result("waiter", {"objective": 0.25, "training_iteration": 4})
    searcher.on_trial_complete("waiter")  # Tune's stop of a paused trial: no result
    searcher.on_trial_result("raised", {"objective": 0.5})
    searcher.on_trial_complete("raised", error=True)
    searcher.on_trial_result("ran", {"objective": 0.5})
    searcher.on_trial_complete("ran", {"objective": 0.75})
    searcher.on_trial_complete("never-reported")
    assert optuna.completed == {"waiter": {"objective": 0.25}, "raised": None, "ran": {"objective": 0.75},
                                "never-reported": None}


def test_a_resumed_sweep_starts_without_waiters_and_its_scheduler_frees_slots_of_the_searcher_tune_runs():
    """--resume: tuner.pkl gives back the scheduler and the searcher as the Tuner was made, then Tune hands the
    searcher the state of its last snapshot (get_state / set_state). The trials that waited at a rung are
    pending again, each holding its slot; the restored scheduler reaches the restored limiter."""
    stopping = EarlyStopping.of(demo("sweep.max_concurrent_trials=2"))
    tuner_pkl = pickle.dumps((stopping.scheduler(), SearchGenerator(stopping.searcher(Told(), 2))))
    scheduler, search_alg = pickle.loads(tuner_pkl)
    limiter = search_alg.searcher
    a, b = FakeTrial("a"), FakeTrial("b")
    controller = FakeController([a, b], scheduler, search_alg)
    assert limiter.suggest("a") == {} and limiter.suggest("b") == {} and limiter.suggest("c") is None
    assert report(scheduler, controller, a, 1, 3.0) == PAUSE
    assert limiter.waiting == {"a"} and limiter.suggest("c") == {}  # a's slot went to c
    snapshot = limiter.get_state()

    scheduler, search_alg = pickle.loads(tuner_pkl)
    search_alg.searcher.set_state(snapshot)
    limiter = search_alg.searcher
    assert limiter.live_trials == {"a", "b", "c"} and limiter.waiting == set()
    assert limiter.suggest("d") is None
    b = FakeTrial("b")
    assert report(scheduler, FakeController([b], scheduler, search_alg), b, 1, 2.0) == PAUSE
    assert limiter.waiting == {"b"}
    limiter.on_trial_complete("c", {"objective": 0.5})
    assert limiter.suggest("d") == {}  # b waits, c is done: a and d hold the two slots


# -- no slot idles for a waiter when nothing could take it --------------------------------------------------------


def test_a_first_arrival_runs_on_when_no_other_trial_could_use_its_slot_and_stops_if_it_trails():
    """Both of the sweep's trials are running: pausing the first at the rung would idle its slot until the other
    arrives, so it runs on, and is stopped at its next report once the other's arrival shows it trails."""
    scheduler = loss_asha(num_samples=2)
    first, second = FakeTrial("first"), FakeTrial("second")
    limiter = SlotLimiter(NextTrial(), max_concurrent=2)
    controller = FakeController([first, second], scheduler, limiter)
    second.status = Trial.RUNNING
    assert report(scheduler, controller, first, 2, 7.8) == CONTINUE  # would be PAUSE if a third trial could come
    assert scheduler.provisional == {"first": 2} and limiter.waiting == set()
    assert report(scheduler, controller, second, 2, 2.6) == CONTINUE  # compared with first: second leads
    assert scheduler.provisional == {} and scheduler.condemned == {"first"}
    assert report(scheduler, controller, first, 3, 7.5) == STOP
    assert report(scheduler, controller, second, 3, 2.0) == CONTINUE


def test_a_provisional_trial_that_leads_runs_on_and_the_later_arrival_is_judged_as_usual():
    scheduler = loss_asha(num_samples=2)
    first, second = FakeTrial("first"), FakeTrial("second")
    controller = FakeController([first, second], scheduler)
    second.status = Trial.RUNNING
    assert report(scheduler, controller, first, 2, 2.6) == CONTINUE
    assert report(scheduler, controller, second, 2, 7.8) == STOP
    assert scheduler.condemned == set() and report(scheduler, controller, first, 3, 2.0) == CONTINUE


def test_a_first_arrival_still_waits_while_a_new_trial_could_take_its_slot():
    scheduler = loss_asha(num_samples=3)  # a third trial is still to come
    first, second = FakeTrial("first"), FakeTrial("second")
    controller = FakeController([first, second], scheduler)
    second.status = Trial.RUNNING
    assert report(scheduler, controller, first, 2, 7.8) == PAUSE
    paused = FakeTrial("paused-to-resume")  # all trials exist, but one paused (not waiting) can take the slot
    scheduler = loss_asha(num_samples=3)
    controller = FakeController([first, second, paused], scheduler)
    paused.status = Trial.PAUSED
    assert report(scheduler, controller, first, 2, 7.8) == PAUSE
