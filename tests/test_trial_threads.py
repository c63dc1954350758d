"""orchestrator.sweep.trial_threads: a trial's torch threads are the whole CPUs Tune gave it, at least one."""

import pytest

from orchestrator.sweep import trial_threads


@pytest.mark.parametrize(("resources", "threads"), [
    ({"CPU": 1.0, "GPU": 0.0}, 1), ({"CPU": 2.0}, 2), ({"CPU": 0.5, "GPU": 0.5}, 1), ({"CPU": 3.7}, 3), ({}, 1),
])
def test_threads_are_the_whole_cpus_given(resources, threads):
    assert trial_threads(resources) == threads
