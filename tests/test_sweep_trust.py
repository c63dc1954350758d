"""--resume refuses experiment state this project did not write (orchestrator/state_signing.py): a tampered
tuner.pkl is refused before Ray unpickles it; --trust-state lets an unsigned sweep (one from before signing)
through and signs it. A real one-trial sweep on the tiny model, resumed in-process through the CLI."""

from __future__ import annotations

import pickle
import re

import pytest

from orchestrator.cli import main
from orchestrator.sweep import run_sweep
from sweep_support import DEMO, FAST, fast_config, module_store

pytestmark = pytest.mark.e2e

SHORT = ["sweep.num_samples=1", "training.epochs=1", "sweep.asha.enabled=false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep 'kept' (a finished sweep resumes at once: nothing is left to run)."""
    tmp_path = tmp_path_factory.mktemp("trust")
    with module_store(tmp_path):
        run_sweep(fast_config(tmp_path, *SHORT), "kept")
        yield tmp_path


def _resume(tmp_path, *extra: str) -> int:
    overrides = [*FAST, *SHORT, f"sweep.storage_path={tmp_path / 'ray_results'}"]
    return main(["sweep", str(DEMO), "--name", "kept", *[arg for o in overrides for arg in ("--set", o)],
                 "--resume", *extra])


class _Payload:
    """Unpickles as the state it wraps, after creating `marker`: what the probe's tampered tuner.pkl did
    with a shell command, and the resume still succeeded."""

    def __init__(self, marker, original: bytes):
        self.marker, self.original = str(marker), original

    def __reduce__(self):
        return eval, (f"(open({self.marker!r}, 'w').close(), __import__('pickle').loads({self.original!r}))[1]",)


def test_a_tampered_tuner_pkl_is_refused_before_ray_unpickles_it(finished, capsys):
    tuner = finished / "ray_results" / "kept" / "tuner.pkl"
    marker = finished / "ran"
    original = tuner.read_bytes()
    tuner.write_bytes(pickle.dumps(_Payload(marker, original)))
    try:
        status = _resume(finished)
    finally:
        tuner.write_bytes(original)
    assert not marker.exists(), "the payload in tuner.pkl ran"
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: sweep.storage_path: {tuner} does not match its signature")
    assert f"--trust-state, and only if you trust everyone who can write to {finished / 'ray_results'}" in error


def test_trust_state_resumes_an_unsigned_sweep_and_signs_it(finished, capsys):
    experiment = finished / "ray_results" / "kept"
    for signature in experiment.rglob("*.hmac"):  # a sweep started before state was signed
        signature.unlink()
    assert _resume(finished) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(rf"error: sweep.storage_path: {experiment}/experiment_state-[^ ]*\.json is not signed "
                    r"\(and \d+ more files\)", error), error
    assert _resume(finished, "--trust-state") == 0
    assert _resume(finished) == 0  # signed now: the next resume needs no flag
