"""A two-node Ray cluster on this machine: the sweep's trials run on both nodes."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrator.sweep import run_sweep
from sweep_support import fast_config, runs_of, store

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


@pytest.fixture
def two_nodes():
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_trials_run_on_both_nodes(two_nodes, tmp_path, monkeypatch):
    uri = store(tmp_path, monkeypatch)
    # One CPU per trial and one CPU per node: two trials at once can only mean one on each node.
    config = fast_config(tmp_path, "sweep.num_samples=4", "sweep.resources={cpu: 1, gpu: 0}",
                         "search_space.methods=[lora]", "search_space.points_to_evaluate=[]",
                         "training.epochs=1", "sweep.asha.enabled=false")
    run_sweep(config, "cluster")
    _, _, children = runs_of(uri, "cluster")
    assert len(children) == 4 and all(run.info.status == "FINISHED" for run in children)
    nodes = {run.data.tags["recall.node_id"] for run in children}
    assert nodes == {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
