"""Experiment state this project wrote, told apart from any other: `--resume` refuses the rest.

`--resume` hands the sweep's experiment folder to `tune.Tuner.restore`, which unpickles files from it:
tuner.pkl, then the newest experiment_state-*.json (trial states with cloudpickled fields),
search_gen_state-*.json and searcher-state-*.pkl (the searcher) and callback-states-*.pkl; each trial's
folder holds a params.pkl (and error.pkl) as well. Unpickling runs code, so whoever can write to
sweep.storage_path could otherwise run any command in the driver of the next --resume. Each of these
files therefore has a signature beside it, `<file>.hmac`: HMAC-SHA256 over its path in the experiment
and its bytes, keyed by a secret kept outside the storage folder (`key_path`). --resume checks every one
before Ray reads anything (`verify`); `--trust-state` signs what is there instead (`sign`). Checkpoints
are not signed: the trials write them and read back only safetensors, JSON and a tensor state loaded with
`torch.load(weights_only=True)` (trials/trial.py), which runs no code.

When: tuner.pkl as the sweep's Tuner is created (orchestrator/sweep.py); the rest at each snapshot Tune
takes of the experiment (`SignedSearch`), in the driver's staging folder before Tune uploads it to
storage_path. Every snapshot reaches storage with its signatures, so a driver killed at any moment leaves
a sweep that resumes.

A signature beside each file rather than one manifest: a resumed sweep writes its snapshots beside the
files of the sessions before it, from a staging folder that holds only its own; a manifest written from
there would drop their signatures.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path, PurePosixPath

import pyarrow.fs
from ray.tune.search import SearchGenerator

from orchestrator.errors import SweepError

KEY_ENV = "RECALL_STATE_KEY"
SUFFIX = ".hmac"
# A shorter key is a typo or a truncated file, not a secret: 32 bytes is SHA-256's own strength.
MIN_KEY_BYTES = 32
# JSON that Ray decodes with cloudpickle (TuneFunctionDecoder, _load_newest_checkpoint); every *.pkl too.
PICKLED_JSON = re.compile(r"(experiment_state|search_gen_state)-.*\.json")


def key_path() -> Path:
    """$RECALL_STATE_KEY (one file every driver of a team's cluster reads), else
    ~/.config/recall-orchestrator/state.key ($XDG_CONFIG_HOME respected)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "recall-orchestrator" / "state.key"


def _key_name() -> str:
    return f"{KEY_ENV}={key_path()}" if os.environ.get(KEY_ENV) else str(key_path())


def check_key(storage_root: str) -> None:
    """A key inside the storage folder would be readable, and replaceable, by whoever it guards against."""
    if "://" not in storage_root and key_path().resolve().is_relative_to(Path(storage_root)):
        raise SweepError(f"state key {_key_name()} is inside sweep.storage_path {storage_root}: whoever can write "
                         f"there could sign their own state; keep the key outside it (orchestrator/state_signing.py)")


def _create_key(path: Path) -> None:
    """Random, readable by this user alone; linked into place so that two drivers starting at once share
    one key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(secrets.token_hex(MIN_KEY_BYTES) + "\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another driver created it first: use that one
    finally:
        temporary.unlink()


def _key(create: bool) -> bytes | None:
    """The key's bytes; None when it does not exist and `create` is false."""
    path = key_path()
    if create and not path.exists():
        _create_key(path)
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise SweepError(f"state key {_key_name()}: {len(key)} bytes, fewer than {MIN_KEY_BYTES}; delete it to have "
                         "a new one made (sweeps signed with it then resume only with --trust-state)")
    return key


def _mac(key: bytes, relative: str, data: bytes) -> bytes:
    # The path is signed with the bytes: a signed file copied over another is refused too.
    return hmac.new(key, relative.encode() + b"\0" + data, hashlib.sha256).hexdigest().encode()


def is_state(name: str) -> bool:
    return name.endswith(".pkl") or PICKLED_JSON.fullmatch(name) is not None


def _state_files(filesystem, folder: str) -> list[str]:
    """The state files under `folder`, as paths relative to it: the experiment's own first."""
    selector = pyarrow.fs.FileSelector(folder, recursive=True, allow_not_found=True)
    found = [PurePosixPath(info.path).relative_to(folder).as_posix() for info in filesystem.get_file_info(selector)
             if info.type == pyarrow.fs.FileType.File and is_state(info.base_name)]
    return sorted(found, key=lambda relative: (relative.count("/"), relative))


def _read(filesystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.readall()


def sign(filesystem, folder: str) -> int:
    """Sign every state file under `folder` (an experiment, or Tune's staging copy of one) as it is; how many."""
    key = _key(create=True)
    folder = folder.rstrip("/")
    files = _state_files(filesystem, folder)
    for relative in files:
        with filesystem.open_output_stream(f"{folder}/{relative}{SUFFIX}") as out:
            out.write(_mac(key, relative, _read(filesystem, f"{folder}/{relative}")))
    return len(files)


def verify(filesystem, folder: str, shown: str, storage_root: str) -> None:
    """Refuse the experiment at `folder` (`shown` to the user) unless every state file in it carries its
    signature under this machine's key; the error names the first that does not."""
    override = f"resume with --trust-state, and only if you trust everyone who can write to {storage_root}"
    key = _key(create=False)
    if key is None:
        raise SweepError(f"sweep.storage_path: cannot check that {shown} was written by this project's sweeps: no "
                         f"state key {_key_name()}. Set {KEY_ENV} to the key file of the machine whose driver ran "
                         f"the sweep, or {override}")
    folder = folder.rstrip("/")
    problems = []
    for relative in _state_files(filesystem, folder):
        try:
            signature = _read(filesystem, f"{folder}/{relative}{SUFFIX}").strip()
        except FileNotFoundError:
            problems.append(f"{shown}/{relative} is not signed")
            continue
        if not hmac.compare_digest(signature, _mac(key, relative, _read(filesystem, f"{folder}/{relative}"))):
            problems.append(f"{shown}/{relative} does not match its signature")
    if problems:
        more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
        raise SweepError(f"sweep.storage_path: {problems[0]}{more}: it may not come from this project's sweeps (state "
                         f"key {_key_name()}), and --resume would run code from it. To run it anyway, {override}")


class SignedSearch(SearchGenerator):
    """Tune's own wrapper of a Searcher, signing every snapshot of the experiment.

    TuneController.save_to_dir writes experiment_state-*.json, then calls this (the searcher's files),
    then saves the callbacks' state, and only then does Tune upload the staging folder to storage_path.
    None of the sweep's callbacks keeps state (Callback.get_state); one that did would write a
    callback-states-*.pkl after the signing, and --resume would refuse it unsigned.
    The key is read at each snapshot, never kept: this object is pickled into tuner.pkl."""

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        super().save_to_dir(dirpath, session_str)
        sign(pyarrow.fs.LocalFileSystem(), dirpath)
