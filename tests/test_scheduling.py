"""ComparingASHA's rule, driven directly: Ray's ASHA when nobody need wait; a first arrival waits for company."""

import random

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search import Searcher

from bench.scheduler_replay import FakeController, FakeTrial
from orchestrator.scheduling import WAITING, ComparingASHA, SlotLimiter, rungs

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


@pytest.fixture(autouse=True)
def no_waiters_left_over():
    WAITING.clear()
    yield
    WAITING.clear()


def loss_asha(**kwargs) -> ComparingASHA:
    settings = {"max_t": 20, "grace_period": 2, "reduction_factor": 4, "compare_at_least": 2, **kwargs}
    return ComparingASHA("val_answer_loss", "min", **settings)


def report(scheduler, controller, trial, epoch: int, loss: float) -> str:
    trial.status = Trial.RUNNING
    return scheduler.on_trial_result(controller, trial, {"training_iteration": epoch, "val_answer_loss": loss})


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
    controller = FakeController([first, second], scheduler)
    ray.on_trial_add(None, first)
    assert ray.on_trial_result(None, first, {"training_iteration": 2, "val_answer_loss": 7.8}) == CONTINUE

    assert report(scheduler, controller, first, 1, 7.8) == CONTINUE
    assert report(scheduler, controller, first, 2, 7.8) == PAUSE  # Ray's ASHA lets it through
    first.status = Trial.PAUSED
    assert WAITING == {"seed-recipe"}
    assert report(scheduler, controller, second, 2, 2.6) == CONTINUE
    assert first.status == Trial.TERMINATED and controller.stopped == [first]
    assert WAITING == set()


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
    controller = FakeController([alone], scheduler)
    assert report(scheduler, controller, alone, 2, 5.0) == PAUSE
    alone.status = Trial.PAUSED
    assert scheduler.choose_trial_to_run(controller) is alone
    assert scheduler.waiting == {} and WAITING == set()


def test_a_pending_trial_runs_before_a_waiter_is_given_up_on():
    scheduler = loss_asha()
    waiter, pending = FakeTrial("waiter"), FakeTrial("pending")
    controller = FakeController([waiter, pending], scheduler)
    assert report(scheduler, controller, waiter, 2, 5.0) == PAUSE
    waiter.status, pending.status = Trial.PAUSED, Trial.PENDING
    assert scheduler.choose_trial_to_run(controller) is pending
    assert scheduler.waiting == {"waiter": 2}


def test_slots_held_by_waiting_trials_are_free_for_new_ones():
    class Constant(Searcher):
        def suggest(self, trial_id):
            return {"x": 1}

    limiter = SlotLimiter(Constant(metric="objective", mode="max"), max_concurrent=1)
    assert limiter.suggest("a") == {"x": 1}
    assert limiter.suggest("b") is None  # "a" holds the only slot
    WAITING.add("a")
    assert limiter.suggest("b") == {"x": 1}
    assert limiter.suggest("c") is None


def test_the_first_rung_compares_the_early_signal_and_the_later_ones_the_objective():
    """compare_by: auto. After one epoch a lucky guess can lift recall; the loss is what tells then. Later,
    recall separates the trials, and a lower loss with fewer right answers does not win."""
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
