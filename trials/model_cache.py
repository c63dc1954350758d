"""Where embedded base models are built once and kept, and how they get there atomically.

Concurrent trials may race to build the same model: each builds in a private temporary directory
that is renamed into place, so a reader sees either no model or a whole one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# The file a finished build always has (save_pretrained writes it); its presence means "complete".
COMPLETE_MARKER = "config.json"


def cache_root() -> Path:
    return Path(os.environ.get("RECALL_CACHE", Path.home() / ".cache" / "recall-orchestrator"))


def model_identity(base_path: str) -> str:
    """What a cache entry computed by a base model is keyed by: its path and its config's hash."""
    config = Path(base_path) / "config.json"
    return base_path + (hashlib.sha256(config.read_bytes()).hexdigest() if config.exists() else "")


def json_cache_path(kind: str, *key) -> Path:
    """`cache_root()/kind/<hash of key>.json`: where a result computed from `key` (JSON-able parts) is kept."""
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    return cache_root() / kind / f"{digest}.json"


def write_json_atomically(path: Path, obj) -> None:
    """A cache file appears whole or not at all: two sweeps starting at once may both write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".writing-", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(obj, file)
    os.replace(staging, path)


def build_once(name: str, build: Callable[[Path], None]) -> Path:
    """`cache_root()/name`, calling `build(staging_dir)` first if it is not there yet."""
    target = cache_root() / name
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / COMPLETE_MARKER).exists():  # lost the race to a broken writer: re-raise
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
