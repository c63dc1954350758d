"""The signatures --resume checks before Ray unpickles a sweep's experiment state (orchestrator/state_signing.py),
on a folder laid out as Tune leaves one: no Ray, no sweep."""

from __future__ import annotations

import stat

import pyarrow.fs
import pytest

from orchestrator import state_signing
from orchestrator.errors import SweepError
from orchestrator.state_signing import check_key, sign, verify

LOCAL = pyarrow.fs.LocalFileSystem()
TRIAL = "_train_in_tune_0e45aa6c_1_lora_r=8"


@pytest.fixture(autouse=True)
def key(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "state.key"
    monkeypatch.setenv(state_signing.KEY_ENV, str(path))
    return path


@pytest.fixture
def experiment(tmp_path):
    """What Tune writes: the state it unpickles on restore, a trial's params.pkl, and files it only reads as
    data (JSON, CSV, a checkpoint)."""
    folder = tmp_path / "ray_results" / "night"
    (folder / TRIAL / "checkpoint_000000").mkdir(parents=True)
    for name in ("tuner.pkl", "experiment_state-2026-12-03_10-34-55.json", "searcher-state-2026-12-03_10-34-55.pkl",
                 "search_gen_state-2026-12-03_10-34-55.json", f"{TRIAL}/params.pkl"):
        (folder / name).write_bytes(f"state of {name}".encode())
    for name in ("basic-variant-state.json", f"{TRIAL}/params.json", f"{TRIAL}/progress.csv",
                 f"{TRIAL}/checkpoint_000000/trainer_state.pt"):
        (folder / name).write_text("data")
    return folder


def _verify(folder):
    verify(LOCAL, str(folder), str(folder), str(folder.parent))


def test_signed_state_passes_and_only_pickles_are_signed(experiment, key):
    assert sign(LOCAL, str(experiment)) == 5
    _verify(experiment)
    assert sorted(path.name for path in experiment.rglob("*.hmac")) == [
        "experiment_state-2026-12-03_10-34-55.json.hmac", "params.pkl.hmac", "search_gen_state-2026-12-03_10-34-55.json.hmac",
        "searcher-state-2026-12-03_10-34-55.pkl.hmac", "tuner.pkl.hmac"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600  # made by the first signing, for this user alone


def test_a_changed_file_is_named_with_the_storage_path_and_the_override(experiment):
    sign(LOCAL, str(experiment))
    (experiment / "tuner.pkl").write_bytes(b"os.system")
    with pytest.raises(SweepError) as refused:
        _verify(experiment)
    message = str(refused.value)
    assert message.startswith(f"sweep.storage_path: {experiment}/tuner.pkl does not match its signature: ")
    assert message.endswith(f"resume with --trust-state, and only if you trust everyone who can write to "
                            f"{experiment.parent}")
    assert "\n" not in message


@pytest.mark.parametrize("added", ["searcher-state-2099-01-01_00-00-00.pkl", "experiment_state-2099.json",
                                   f"{TRIAL}/error.pkl", "callback-states-2099.pkl"])
def test_a_state_file_nobody_signed_is_refused(experiment, added):
    """Tune loads the newest snapshot by name: one added later would be the one it unpickles."""
    sign(LOCAL, str(experiment))
    (experiment / added).write_bytes(b"payload")
    with pytest.raises(SweepError, match=f"{experiment}/{added} is not signed: "):
        _verify(experiment)


def test_a_signed_file_copied_over_another_is_refused(experiment):
    sign(LOCAL, str(experiment))
    for suffix in ("", ".hmac"):
        source = experiment / f"searcher-state-2026-12-03_10-34-55.pkl{suffix}"
        (experiment / f"tuner.pkl{suffix}").write_bytes(source.read_bytes())
    with pytest.raises(SweepError, match="tuner.pkl does not match its signature"):
        _verify(experiment)


def test_another_key_or_none_is_refused(experiment, tmp_path, monkeypatch):
    sign(LOCAL, str(experiment))
    monkeypatch.setenv(state_signing.KEY_ENV, str(tmp_path / "other.key"))
    with pytest.raises(SweepError, match=f"no state key RECALL_STATE_KEY={tmp_path / 'other.key'}. Set "
                                         "RECALL_STATE_KEY to the key file of the machine whose driver ran the sweep"):
        _verify(experiment)
    (tmp_path / "other.key").write_text("b" * 64)
    with pytest.raises(SweepError, match="does not match its signature"):
        _verify(experiment)


def test_a_short_key_is_refused(experiment, key):
    key.parent.mkdir()
    key.write_text("secret\n")
    with pytest.raises(SweepError, match=f"state key RECALL_STATE_KEY={key}: 6 bytes, fewer than 32"):
        sign(LOCAL, str(experiment))


def test_the_key_must_live_outside_the_storage_folder(tmp_path, monkeypatch):
    check_key(str(tmp_path / "ray_results"))
    monkeypatch.setenv(state_signing.KEY_ENV, str(tmp_path / "ray_results" / "state.key"))
    with pytest.raises(SweepError, match="is inside sweep.storage_path"):
        check_key(str(tmp_path / "ray_results"))
    check_key("s3://bucket/sweeps")  # a local key is never inside a bucket


def test_the_default_key_is_in_the_users_config_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(state_signing.KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert state_signing.key_path() == tmp_path / "config" / "recall-orchestrator" / "state.key"
