"""The CPUs finished trials free, lent to the trials still running at a sweep's end.

On CPUs a sweep of more trials than slots ends with fewer trials than slots: the last trial often runs
alone while the other slots idle. In the tiny bench's early-stopping sweep on 2 cores that tail was 8 s
and 17 s of 69 s and 92 s walls (two runs of the same sweep). Ray Tune gives a running trial more CPUs
only by restarting its actor (ResourceChangingScheduler), and that refuses `reuse_actors`, which keeps
the loaded base model in each worker. torch can change its threads between two epochs, so the driver
lends threads instead:

- `LendFreedCpus`, a Tune callback in the driver, looks at the trials at each step of Tune's loop. Once
  every trial of the sweep exists and none is pending or paused (none can start, or resume, in a freed
  slot), each running CPU trial may run on floor(CPUs of the driver's node / running trials) threads,
  where that is more than its own CPUs give it (`loans`). It writes them to a small JSON file beside the
  experiment, {"node_id": the driver's node, "threads": {trial_id: threads}}. A trial that is pending
  again (Tune retrying it) ends every loan at the next step.
- The trial reads that file at each epoch's end and runs its next epoch on what it is lent, or on its
  own CPUs (orchestrator/trainable.py, `threads_lent`); `epoch_threads` in its results says which.

Only trials on the driver's node take a loan (a shared file system may show the file on others), and
the CPUs shared out are that node's, divided among the sweep's running trials on every node: no node runs
more threads than it has CPUs.
Jobs that share a Ray cluster with the sweep may be placed on the CPUs it lends; set
`sweep.resources.lend_freed_cpus: false` there. A trial that ran on more threads adds its sums in
another order, so its figures may differ in the last bits from a rerun on its own CPUs.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune import Callback
from ray.tune.experiment import Trial

from orchestrator.trainable import trial_threads
from trials.model_cache import write_json_atomically


def loans(trials: list[Trial], num_samples: int, node_cpus: int) -> dict[str, int]:
    """{trial_id: threads} for the running CPU trials, once no other trial can take a freed slot: all
    `num_samples` trials exist and none is pending or paused."""
    if len(trials) < num_samples or any(trial.status in (Trial.PENDING, Trial.PAUSED) for trial in trials):
        return {}
    running = [trial for trial in trials if trial.status == Trial.RUNNING]
    share = node_cpus // max(len(running), 1)
    lent = {}
    for trial in running:
        resources = trial.placement_group_factory.required_resources
        if not resources.get("GPU") and share > trial_threads(resources):  # a GPU trial's step is not the CPU's
            lent[trial.trial_id] = share
    return lent


def driver_node() -> tuple[str, int]:
    """The Ray node this driver runs on, and the CPUs Ray counts there (0 when on none, as a Ray Client)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return here, next((int(node["Resources"].get("CPU", 0)) for node in ray.nodes()
                       if node["NodeID"] == here and node["Alive"]), 0)


class LendFreedCpus(Callback):
    """Writes `loans` to `path` whenever they change (module docstring); removes it when the sweep ends."""

    def __init__(self, path: Path, num_samples: int):
        self.path, self.num_samples = Path(path), num_samples
        self._written: dict[str, int] | None = None
        self._node: tuple[str, int] | None = None

    def setup(self, **info):
        # A resumed sweep starts from no loans, whatever a killed driver left in the file.
        self._written = self._node = None
        self.path.unlink(missing_ok=True)

    def on_step_begin(self, iteration, trials, **info):
        if self._node is None:
            self._node = driver_node()
        node_id, cpus = self._node
        lent = loans(trials, self.num_samples, cpus)
        if lent != self._written:
            # Whole or not at all: a trial reads it at any moment.
            write_json_atomically(self.path, {"node_id": node_id, "threads": lent})
            self._written = lent

    def on_experiment_end(self, trials, **info):
        self.path.unlink(missing_ok=True)
