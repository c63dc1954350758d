"""The CPUs finished trials free, lent to the trials still running at a sweep's end.

On CPUs a sweep of more trials than slots ends with fewer trials than slots: the last trial often runs
alone while the other slots idle. In the tiny bench's early-stopping sweep on 2 cores that tail was 8 s
and 17 s of 69 s and 92 s walls (two runs of the same sweep). Ray Tune gives a running trial more CPUs
only by restarting its actor (ResourceChangingScheduler), and that refuses `reuse_actors`, which keeps
the loaded base model in each worker. torch can change its threads between two epochs, so the driver
lends threads instead:

- `LendFreedCpus`, a Tune callback in the driver, looks at the trials at each step of Tune's loop. Once
  every trial of the sweep exists and none is pending or paused (none can start, or resume, in a freed
  slot), the running CPU trials share out the threads of their own CPUs plus the CPUs Ray has reserved
  for nothing (so not those another sweep on the same Ray holds), where that is more than a trial's own
  CPUs give it (`loans`). It writes them to a small JSON file beside the experiment, {trial_id: threads}.
  A trial that is pending again (Tune retrying it) ends every loan at the next step.
- The trial reads that file at each epoch's end and runs its next epoch on what it is lent, or on its
  own CPUs (orchestrator/trainable.py, `threads_lent`); `epoch_threads` in its results says which.

Loans are made on a one-node Ray only: on several nodes Ray's free CPUs may be on another node than a
trial's. On one node every trial runs where the CPUs were counted, so a trial that can read the file
(the driver's machine, or any through a shared file system) may take its loan. Ray's count is
all the sweep knows of the machine: two Rays started on one machine (as the test suite's two workers do)
each count every core as theirs, and a loan then oversubscribes the cores (torch threads that wait on
each other slow down many times over): set `sweep.resources.lend_freed_cpus: false` there. Jobs placed on
the lent CPUs after a loan is made share them until the next epoch's end, when the loans are looked at
again. A trial that ran on more threads adds its sums in another order, so its figures may differ in the
last bits from a rerun on its own CPUs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ray.tune import Callback
from ray.tune.experiment import Trial

from orchestrator.trainable import trial_threads
from trials.model_cache import write_json_atomically

FREE_CPUS_EVERY_S = 1.0  # how stale Ray's count of free CPUs may be when a loan is decided


def loans(trials: list[Trial], num_samples: int, free_cpus: Callable[[], int]) -> dict[str, int]:
    """{trial_id: threads} for the running CPU trials, once no other trial can take a freed slot (all
    `num_samples` trials exist and none is pending or paused): the threads their own CPUs give them plus the
    CPUs Ray has reserved for nothing (`free_cpus()`, asked only then), shared out evenly."""
    if len(trials) < num_samples or any(trial.status in (Trial.PENDING, Trial.PAUSED) for trial in trials):
        return {}
    own = {}
    for trial in trials:
        resources = trial.placement_group_factory.required_resources
        if trial.status == Trial.RUNNING and not resources.get("GPU"):  # a GPU trial's step is not the CPU's
            own[trial.trial_id] = trial_threads(resources)
    if not own:
        return {}
    share = (sum(own.values()) + free_cpus()) // len(own)
    return {trial_id: share for trial_id, threads in own.items() if share > threads}


def free_cpus() -> int:
    """The CPUs Ray has reserved for no task or actor, whoever's (another sweep on the same cluster takes its
    own), on a one-node Ray; 0 on a cluster of several nodes, so nothing is lent there."""
    import ray

    if sum(1 for node in ray.nodes() if node["Alive"]) != 1:
        return 0
    return int(ray.available_resources().get("CPU", 0))


class LendFreedCpus(Callback):
    """Writes `loans` to `path` whenever they change (module docstring); removes it when the sweep ends."""

    def __init__(self, path: Path, num_samples: int):
        self.path, self.num_samples = Path(path), num_samples
        self._written: dict[str, int] | None = None
        self._free: tuple[float, int] | None = None  # (when, free_cpus()): Tune's loop steps many times a second

    def setup(self, **info):
        # A resumed sweep starts from no loans, whatever a killed driver left in the file.
        self._written = self._free = None
        self.path.unlink(missing_ok=True)

    def on_step_begin(self, iteration, trials, **info):
        lent = loans(trials, self.num_samples, self._free_cpus)
        if lent != self._written:
            # Whole or not at all: a trial reads it at any moment.
            write_json_atomically(self.path, lent)
            self._written = lent

    def _free_cpus(self) -> int:
        if self._free is None or time.monotonic() - self._free[0] >= FREE_CPUS_EVERY_S:
            self._free = time.monotonic(), free_cpus()
        return self._free[1]

    def on_experiment_end(self, trials, **info):
        self.path.unlink(missing_ok=True)
