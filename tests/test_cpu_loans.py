"""orchestrator/cpu_loans.py: once no trial is left to start, the trials still running on CPUs are lent the
threads of the CPUs Ray has free, on a one-node Ray; a trial reads its loan
(orchestrator.trainable.threads_lent) and falls back to its own CPUs whenever there is none to read."""

import json

import pytest
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.experiment import Trial

from orchestrator.cpu_loans import LendFreedCpus, loans
from orchestrator.trainable import threads_lent


def trial(status: str, cpu: float = 1.0, gpu: float = 0.0) -> Trial:
    made = Trial("trainable", config={}, stub=True,
                 placement_group_factory=PlacementGroupFactory([{"CPU": cpu, **({"GPU": gpu} if gpu else {})}]))
    made.create_placement_group_factory()
    made.set_status(status)
    return made


R, T, P, W = Trial.RUNNING, Trial.TERMINATED, Trial.PENDING, Trial.PAUSED


@pytest.mark.parametrize(("statuses", "num_samples", "free", "lent"), [
    ([T, T, R], 3, 1, [None, None, 2]),  # the last trial, alone: its CPU and the one freed
    ([T, T, R], 3, 0, [None, None, None]),  # the freed CPU taken (another sweep on the same Ray)
    ([T, R, R], 3, 0, [None, None, None]),  # two running on two CPUs: nothing freed
    ([T, R, R], 3, 2, [None, 2, 2]),  # four CPUs, two running: two each
    ([T, R, R], 3, 3, [None, 2, 2]),  # never more threads than there are CPUs
    ([T, T, R], 4, 1, [None, None, None]),  # a trial still to be created would take the freed slot
    ([T, P, R], 3, 1, [None, None, None]),  # so would a pending one (a retry)
    ([T, W, R], 3, 1, [None, None, None]),  # or a paused one, waiting at a rung, when it resumes
    ([T, T, T], 3, 2, [None, None, None]),
])
def test_threads_are_lent_only_once_no_trial_can_take_a_freed_cpu(statuses, num_samples, free, lent):
    trials = [trial(status) for status in statuses]
    asked = []
    assert loans(trials, num_samples, lambda: asked.append(1) or free) == {
        t.trial_id: n for t, n in zip(trials, lent) if n}
    # Ray is asked for its free CPUs only where a loan could follow.
    assert bool(asked) == (len(trials) >= num_samples and R in statuses and P not in statuses and W not in statuses)


def test_a_trial_is_lent_only_what_its_own_cpus_do_not_give_it_and_a_gpu_trial_nothing():
    two, gpu = trial(R, cpu=2.0), trial(R, gpu=1.0)
    assert loans([two, trial(T)], 2, lambda: 0) == {}  # it has both already
    assert loans([two, trial(T)], 2, lambda: 2) == {two.trial_id: 4}
    assert loans([gpu, trial(T)], 2, lambda: 16) == {}


def test_a_trial_reads_its_loan_and_runs_on_its_own_cpus_without_one(tmp_path):
    path = tmp_path / "loans.json"
    assert threads_lent(None, "a", 1) == 1  # lending off
    assert threads_lent(str(path), "a", 1) == 1  # nothing lent yet, or the driver on another machine
    path.write_text(json.dumps({"a": 2}))
    assert threads_lent(str(path), "a", 1) == 2 and threads_lent(str(path), "b", 1) == 1
    assert threads_lent(str(path), "a", 3) == 3  # a loan never takes away its own CPUs
    path.write_text("{")  # not JSON: own CPUs, the trial goes on
    assert threads_lent(str(path), "a", 1) == 1


def test_nothing_is_lent_on_a_ray_of_several_nodes(monkeypatch):
    # Ray's free CPUs may then be on another node than a trial's: a trial on any node (a shared file system shows
    # every node the file) must not take them.
    import ray

    from orchestrator.cpu_loans import free_cpus

    nodes = [{"Alive": True}, {"Alive": True}, {"Alive": False}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 4.0})
    assert free_cpus() == 0
    assert loans([trial(R), trial(T)], 2, free_cpus) == {}
    nodes.pop(0)  # one node alive: its free CPUs are the trials'
    assert free_cpus() == 4


def test_the_driver_writes_loans_as_they_change_and_removes_them_at_the_end(tmp_path, monkeypatch):
    from orchestrator import cpu_loans

    free = [0]  # what Ray reports free: nothing while both trials run
    monkeypatch.setattr(cpu_loans, "free_cpus", lambda: free[0])
    monkeypatch.setattr(cpu_loans, "FREE_CPUS_EVERY_S", 0.0)
    path = tmp_path / "sweep.cpu_loans.json"
    path.write_text(json.dumps({"stale": 2}))  # a killed driver's
    lender = LendFreedCpus(path, num_samples=2)
    lender.setup()
    assert not path.exists()
    first, second = trial(R), trial(R)
    lender.on_step_begin(0, [first, second])
    assert json.loads(path.read_text()) == {}
    second.set_status(T)
    free[0] = 1  # its CPU, given back to Ray
    lender.on_step_begin(1, [first, second])
    assert json.loads(path.read_text()) == {first.trial_id: 2}
    free[0] = 0  # another sweep on the same Ray takes it: the loan ends
    lender.on_step_begin(2, [first, second])
    assert json.loads(path.read_text()) == {}
    lender.on_experiment_end([first, second])
    assert not path.exists()
