"""The infra/ files that cannot run here (no Docker, no Kubernetes, no SSH-reachable GPU machines):
what can be checked without them. They parse, name files that exist, agree with each other on
versions, and the `ray up` config passes Ray's own schema. tests/test_tracking_server.py runs
infra/mlflow-server.sh for real."""

from __future__ import annotations

import copy
import re
import shlex

import pytest
import yaml

from sweep_support import REPO

INFRA = REPO / "infra"
KUBERAY = sorted((INFRA / "kuberay").glob("*.yaml"))


def dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", (INFRA / "Dockerfile").read_text(), re.MULTILINE).group(1)


def test_dockerfile_copies_files_that_exist_and_pins_what_make_install_does():
    text = (INFRA / "Dockerfile").read_text()
    copied = [source for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE) for source in line.split()[:-1]]
    assert copied, "no COPY lines found"
    for source in copied:
        assert (REPO / source).exists(), source
    torch_pin = re.search(r"torch==(\S+)", (REPO / "Makefile").read_text()).group(1)
    assert dockerfile_arg("TORCH_VERSION") == torch_pin


def test_compose_services_build_from_this_repository():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker"} <= set(services)
    for name in ("mlflow", "ray-head", "ray-worker"):
        build = services[name]["build"]
        assert (INFRA / build["context"] / build["dockerfile"]).resolve() == (INFRA / "Dockerfile").resolve(), name
    mlflow = services["mlflow"]["command"]
    assert "--serve-artifacts" in mlflow
    assert any(arg.startswith("--backend-store-uri=postgresql+psycopg2://") for arg in mlflow)
    # Everything the containers publish is on the host's loopback only.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    head = services["ray-head"]["command"]
    assert services["ray-worker"]["command"][2] == f"--address=ray-head:{head[3].split('=')[1]}"


def test_ray_up_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    commands = " ".join(config["setup_commands"])
    assert f'"ray[default]=={dockerfile_arg("RAY_VERSION")}"' in commands
    assert f"torch=={dockerfile_arg('TORCH_VERSION')}" in commands


@pytest.mark.parametrize("path", KUBERAY, ids=lambda path: path.name)
def test_kuberay_manifests(path):
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents and all(document["apiVersion"] and document["kind"] for document in documents)
    for document in documents:
        spec = document["spec"]
        if document["kind"] == "RayJob":
            argv = shlex.split(spec["entrypoint"])
            assert argv[:2] == ["orchestrator", "sweep"]
            # The image holds the repository's configs/ and data/ at /app (infra/Dockerfile).
            assert (REPO / argv[2].removeprefix("/app/")).exists(), argv[2]
            spec = spec["rayClusterSpec"]
        if document["kind"] in ("RayCluster", "RayJob"):
            assert spec["rayVersion"] == dockerfile_arg("RAY_VERSION")
            workers = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
            assert workers["resources"]["limits"]["nvidia.com/gpu"] >= 1
            claims = {volume["persistentVolumeClaim"]["claimName"]
                      for volume in spec["headGroupSpec"]["template"]["spec"]["volumes"]
                      if "persistentVolumeClaim" in volume}
            assert claims == {"recall-ray-results"}


def test_every_infra_file_says_how_to_start_it():
    for path in [INFRA / "mlflow-server.sh", INFRA / "Dockerfile", INFRA / "docker-compose.yml",
                 INFRA / "ray-cluster.yaml", *KUBERAY]:
        header = "".join(line for line in path.read_text().splitlines(keepends=True)[:25] if line.startswith("#"))
        assert re.search(r"(docker|kubectl|ray up|mlflow-server\.sh)", header), path
