"""Bad names and storage URIs through the CLI, as a user types them: `orchestrator sweep` exits 2 with one
error line, before Ray starts or anything is written (tests/test_sweep_storage.py checks the same
in-process, and the quoting of names in MLflow filters)."""

from __future__ import annotations

import subprocess

import pytest

from service_support import without_mlflow_uris
from sweep_support import DEMO, runs_of


def _sweep(orchestrator, tmp_path, name: str, storage: str) -> subprocess.CompletedProcess:
    # AWS_EC2_METADATA_DISABLED: no wait on an instance-metadata endpoint for credentials that are not there
    env = {**without_mlflow_uris(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "AWS_EC2_METADATA_DISABLED": "true"}
    return subprocess.run(orchestrator("sweep", str(DEMO), "--name", name, "--set", f"sweep.storage_path={storage}"),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["../escaped", "it's", 'say "hi"'], ids=["dot-dot", "quote", "double-quotes"])
def test_sweep_name_with_quotes_or_dot_dot_is_refused_before_any_write(orchestrator, tmp_path, name):
    result = _sweep(orchestrator, tmp_path, name, str(tmp_path / "ray_results"))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"error: sweep name {name!r}: use letters, digits" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "escaped").exists()
    assert runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", name)[1] is None


@pytest.mark.parametrize("storage", ["s3://recall-chaos-no-such-bucket/sweeps", "nosuchfs://bucket/sweeps"],
                         ids=["s3", "unknown-scheme"])
def test_storage_uri_nothing_can_open_fails_naming_the_key(orchestrator, tmp_path, storage):
    result = _sweep(orchestrator, tmp_path, "remote", storage)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"sweep.storage_path={storage}: Ray Tune cannot open it" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "remote")[1] is None
