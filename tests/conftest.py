"""Shared fixtures for the one-trial test suite.

The embedded tiny model is cached in ~/.cache/recall-orchestrator (or $RECALL_CACHE) and reused
on purpose, so it is built once per machine; tests that need a private cache set their own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs several pytest workers on 2 cores. Each worker's torch, and every CLI subprocess and Ray worker
# it starts, would take both cores, and two 2-thread trainings at once ran 13x slower than two 1-thread ones on an
# Intel Xeon (bench steps, `threads`: libgomp's threads spin at each barrier while their partner waits for a core).
# So each worker's processes take one thread unless a test sets its own; a sweep's trials still take the CPUs Ray
# gives them (orchestrator.trainable.trial_threads), and a thread that waits sleeps instead of spinning. Measured
# on a fresh clone (Intel Xeon): make test 24 min 22 s, against 30 min 13 s with each worker on both cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "data" / "demo"
DEMO_QA = DEMO_DIR / "qa.jsonl"
DEMO_DOCUMENTS = sorted((DEMO_DIR / "documents").glob("*.txt"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def demo_qa() -> Path:
    return DEMO_QA


@pytest.fixture(scope="session")
def demo_documents() -> list[Path]:
    return list(DEMO_DOCUMENTS)


def write_broken_qa(directory: Path, replace: dict[int, str] | None = None, append: list[str] = (),
                    name: str = "qa.jsonl") -> Path:
    """A copy of the demo qa.jsonl in `directory`, with 1-based lines replaced and lines appended."""
    lines = DEMO_QA.read_text(encoding="utf-8").splitlines()
    for number, text in (replace or {}).items():
        assert 1 <= number <= len(lines), f"the demo qa file has no line {number}"
        lines[number - 1] = text
    lines += list(append)
    path = directory / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def broken_qa(tmp_path):
    """`broken_qa({7: "not json"}, append=[...])` -> path of a broken copy of the demo qa file."""

    def make(replace: dict[int, str] | None = None, append: list[str] = (), name: str = "qa.jsonl") -> Path:
        return write_broken_qa(tmp_path, replace, append, name)

    return make


def orchestrator_command(*args: str) -> list[str]:
    """The `orchestrator` console script of this interpreter's venv (falls back to -m)."""
    script = Path(sys.executable).parent / "orchestrator"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "orchestrator.cli", *args]


@pytest.fixture(scope="session")
def orchestrator():
    """`orchestrator("trial", ...)` -> the argv that runs the CLI in a subprocess."""
    return orchestrator_command


@pytest.fixture(scope="session")
def tokenizer_path() -> str:
    """Path of the embedded tiny model (built once per machine, then read from the cache)."""
    from trials.model import resolve_model

    return resolve_model("embedded:tiny-llama")


@pytest.fixture
def demo_trainer(tokenizer_path, demo_documents, demo_qa):
    """`demo_trainer(rows, learning_rate, **training)` -> a trials.train.Trainer of a fresh LoRA (r 8, every linear
    layer) on the tiny model over the demo's first `rows` train QA pairs, batch 16, one epoch, no warm-up."""
    import torch

    from trials.config import TrainingConfig, TrialConfig
    from trials.data import load_knowledge
    from trials.methods.lora import LoraMethod
    from trials.model import attach_method, load_base_model, load_tokenizer
    from trials.train import Trainer
    from trials.trial import build_examples

    def make(rows: int, learning_rate: float, **training):
        torch.manual_seed(0)
        config = TrialConfig.model_validate({"data": {"documents": demo_documents, "qa": demo_qa},
                                             "training": {"include_documents": False}})
        tokenizer = load_tokenizer(tokenizer_path)
        method = LoraMethod(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])
        model = attach_method(load_base_model(tokenizer_path, torch.device("cpu"), False), method, False)
        examples = build_examples(tokenizer, load_knowledge(config.data), config)[:rows]
        settings = TrainingConfig(epochs=1, batch_size=16, warmup_ratio=0.0, include_documents=False, **training)
        return Trainer(model, examples, settings, learning_rate, tokenizer.pad_token_id, torch.device("cpu"), False)

    return make


# Longest first: `make test` hands whole files to its workers in collection order (xdist's --dist loadfile),
# so a long file collected last would end the suite on one worker alone. A file's rank is its slowest tier.
TIERS = ("real_model", "slow", "cluster", "service", "e2e")


def pytest_collection_modifyitems(config, items):
    def tier(item) -> int:
        return next((rank for rank, marker in enumerate(TIERS) if item.get_closest_marker(marker)), len(TIERS))

    files: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        files[path] = min(files.get(path, len(TIERS)), tier(item))
    order = {item.nodeid: index for index, item in enumerate(items)}
    items.sort(key=lambda item: (files[item.nodeid.split("::")[0]], order[item.nodeid]))
