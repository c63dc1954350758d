"""`orchestrator export`: a registered version out of MLflow, as files any Hugging Face user loads, checked.

- `--merge`: the adapter merged into the base's weights (peft `merge_and_unload`, in the dtype the base
  is stored in), saved as a standalone checkpoint with the tokenizer and its chat template:
  `AutoModelForCausalLM.from_pretrained(DIR)` alone loads it, no peft. LoRA, DoRA and IA3 merge.
  Prefix-tuning adds virtual tokens instead of changing weights, so it cannot merge: it is exported as
  an adapter, and the output says so. So is an adapter with a router (trials/router.py, router.json): the base
  model it sends general questions to is gone once merged.
- without `--merge`: the adapter (peft's files) and `base_model.json`, the pinned reference to its base:
  the model name and the sha256 of the base's config and weight files. The embedded tiny base exists on
  no hub, so it travels in `base/`, as it does inside the registered model.

Before anything is called verified, the export is re-scored beside the registered adapter (scored as its
trial scored it, in the same process: greedy answers in bf16 can differ by a question between processes)
on the version's own test facts (its `knowledge/` artifact) and on the general probe's check questions
(trials/general.py: what the model still knows besides the facts), when the trial had a probe. A merged
export is loaded with plain transformers; an adapter export with peft, from the export's own files. A
drop of more than the tolerance (0.02) in test exact recall or in the share of general questions
answered right refuses: nothing is left at the destination, and the figures say why. `export.json` in
the destination records the figures of an export that passed.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.errors import PromotionError
from trials.model import load_tokenizer
from trials.router import ROUTER_FILE

TOLERANCE = 0.02
BASE_DIR, BASE_REFERENCE, RECORD = "base", "base_model.json", "export.json"


class ExportError(PromotionError):
    """An export that cannot run: the destination is taken, the version holds no test facts."""


@dataclass
class Exported:
    """What `export` wrote, or would have: its figures on the version's test facts."""
    model_uri: str
    directory: str
    method: str
    merged: bool
    test_questions: int
    max_new_tokens: int  # the version's generation budget, with which both were scored
    bf16: bool  # the precision both were scored in (the trial's, where this device has it)
    adapter_test_exact_recall: float  # the registered adapter, scored as its trial scored it
    export_test_exact_recall: float  # the exported files, loaded as a user would
    general_questions: int  # the general probe's check questions (0: the trial had no probe)
    adapter_general_right: float | None  # the share of them answered right
    export_general_right: float | None
    tolerance: float
    note: str = ""

    @property
    def verified(self) -> bool:
        return not self.drops()

    def drops(self) -> list[str]:
        """What fell by more than the tolerance, with its figures."""
        pairs = [("test exact recall", self.adapter_test_exact_recall, self.export_test_exact_recall)]
        if self.general_questions:
            pairs.append(("general questions right", self.adapter_general_right, self.export_general_right))
        return [f"{name} {exported:.3f} exported vs {registered:.3f} registered"
                for name, registered, exported in pairs if registered - exported > self.tolerance]


@dataclass
class _Registered:
    """A downloaded version: where its files are, and its trial config as it is served (the device and
    precision the registered model answers with, orchestrator.registry_model.serving_config)."""
    adapter: Path
    base: str  # a path from_pretrained loads: the bundled copy, else the resolved model name
    bundled: bool
    knowledge: Path | None  # its facts (knowledge/), absent from versions registered before them
    config: object  # trials.config.TrialConfig
    max_new_tokens: int

    @classmethod
    def read(cls, local: Path) -> _Registered:
        from orchestrator.registry_model import (ADAPTER, BASE_MODEL, KNOWLEDGE, TRIAL_CONFIG, read_version,
                                                 serving_config)
        from trials.config import TrialConfig
        from trials.model import resolve_model

        paths, model_config = read_version(local)
        config = TrialConfig.model_validate_json(paths[TRIAL_CONFIG].read_text(encoding="utf-8"))
        bundled = BASE_MODEL in paths
        return cls(adapter=paths[ADAPTER], base=str(paths[BASE_MODEL]) if bundled else resolve_model(config.model),
                   bundled=bundled, knowledge=paths.get(KNOWLEDGE), config=serving_config(config),
                   max_new_tokens=int(model_config["max_new_tokens"]))


def export(model_uri: str, to: Path, *, merge: bool, tolerance: float = TOLERANCE, log=print) -> Exported:
    """Export `model_uri` to `to` (absent or empty), verified; raises ExportError before any model loads
    when it cannot. A refused export (recall dropped) returns `verified` False and leaves `to` untouched."""
    import mlflow

    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise ExportError(f"--to {to}: exists and is not an empty directory; export writes a new one")
    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=scratch))
        registered = _Registered.read(local)
        rows = _test_rows(registered, model_uri)
        note = ""
        method = registered.config.method.label()
        unmergeable = registered.config.method.unmergeable or (
            "its adapter router sends general questions to the base model, which a merged checkpoint no longer has"
            if (registered.adapter / ROUTER_FILE).exists() else None)
        if merge and unmergeable:
            merge, note = False, f"{method} cannot merge ({unmergeable}): exported as an adapter"
            log(note)
        probe = _general_probe(registered, log)
        model, tokenizer, device, bf16 = _load_registered_adapter(registered)
        reference = _scores(model, tokenizer, device, bf16, rows, probe, registered)
        del model
        # Beside the destination (one rename moves it there), made by mkdir so the umask decides who may
        # read it, as for any directory the user makes; mkdtemp's would be private to the user.
        to.parent.mkdir(parents=True, exist_ok=True)
        staging = to.parent / f".{to.name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            (_write_merged if merge else _write_adapter)(registered, staging)
            log(f"wrote the {'merged checkpoint' if merge else 'adapter'}; re-scoring it on {len(rows)} test "
                f"questions and {len(probe)} general ones")
            exported = _scores(*(_load_merged if merge else _load_adapter_export)(registered, staging),
                               rows, probe, registered)
            outcome = Exported(model_uri, str(to.resolve()), method, merge, len(rows), registered.max_new_tokens,
                               bf16, reference[0], exported[0], len(probe), reference[1], exported[1], tolerance,
                               note=note)
            if outcome.verified:
                record = {**asdict(outcome), "verified": True}
                (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
                if to.exists():
                    to.rmdir()  # empty, checked above
                shutil.move(str(staging), str(to))
            return outcome
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _test_rows(registered: _Registered, model_uri: str):
    from orchestrator.lineage import QA_FILE
    from orchestrator.registry_model import KNOWLEDGE
    from trials.config import DataConfig
    from trials.data import load_knowledge

    qa = registered.knowledge / QA_FILE if registered.knowledge else None
    rows = load_knowledge(DataConfig(qa=qa)).split("test") if qa and qa.is_file() else []
    if not rows:
        raise ExportError(f"{model_uri} holds no test facts ({KNOWLEDGE}/{QA_FILE}) to verify an export on: "
                          "promote it again with this version of recall-orchestrator")
    return rows


def _load_registered_adapter(registered: _Registered):
    from trials.evaluate import load_trained

    return load_trained(registered.adapter, registered.config, base_path=registered.base)


def _general_probe(registered: _Registered, log) -> list:
    """The probe's check questions the trial was measured on; [] when it had none (eval.general off, or
    its files are not on this machine: then the output says so). The shipped probe is found in this
    checkout when the trial named it in another."""
    from trials.config import DEFAULT_PROBE
    from trials.general import load_probe

    path = registered.config.eval.general
    if path is None:
        return []
    if not path.exists() and path.parts[-2:] == DEFAULT_PROBE.parts[-2:]:
        path = DEFAULT_PROBE
    if not path.exists():
        log(f"eval.general {path} is not on this machine: the export is not checked on general questions")
        return []
    return [question for question in load_probe(path).questions if question.split == "check"]


def _scores(model, tokenizer, device, bf16, rows, probe, registered: _Registered) -> tuple[float, float | None]:
    """(test exact recall, share of the general check questions right or None), then the model is freed."""
    from trials.evaluate import score_rows
    from trials.general import share_right

    batch_size = registered.config.eval.batch_size
    metrics, _ = score_rows(model, tokenizer, rows, batch_size=batch_size, max_new_tokens=registered.max_new_tokens,
                            device=device, bf16=bf16)
    general = share_right(model, tokenizer, probe, batch_size, device, bf16) if probe else None
    del model
    gc.collect()  # one model at a time: a 7B base and its merged copy would not both fit
    return metrics["exact_recall"], general


def _write_merged(registered: _Registered, directory: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(registered.base, dtype="auto")  # the dtype it is stored in
    merged = PeftModel.from_pretrained(base, str(registered.adapter)).merge_and_unload()
    merged.save_pretrained(directory)
    load_tokenizer(str(registered.adapter)).save_pretrained(directory)  # with the chat template
    del base, merged
    gc.collect()


def _load_merged(registered: _Registered, directory: Path):
    """Plain transformers: the checkpoint as any user loads it, no peft."""
    from trials.model import load_for

    loaded = load_for(registered.config, base_path=str(directory), tokenizer_path=str(directory))
    return loaded.model, loaded.tokenizer, loaded.device, loaded.bf16


def _write_adapter(registered: _Registered, directory: Path) -> None:
    shutil.copytree(registered.adapter, directory, dirs_exist_ok=True)
    base = registered.base
    if registered.bundled:
        shutil.copytree(registered.base, directory / BASE_DIR)
        base = str(directory / BASE_DIR)
    reference = {"base_model": registered.config.model, "bundled": BASE_DIR if registered.bundled else None,
                 "sha256": base_fingerprint(Path(base))}
    (directory / BASE_REFERENCE).write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")


def _load_adapter_export(registered: _Registered, directory: Path):
    """peft, from the export's own files, on the base its reference pins (checked first)."""
    from trials.evaluate import load_trained

    reference = json.loads((directory / BASE_REFERENCE).read_text(encoding="utf-8"))
    base = directory / reference["bundled"] if reference["bundled"] else Path(registered.base)
    if base_fingerprint(base) != reference["sha256"]:
        raise ExportError(f"the base at {base} is not the one {BASE_REFERENCE} pins")
    return load_trained(directory, registered.config, base_path=str(base))


def base_fingerprint(base: Path) -> dict[str, str]:
    """sha256 of a local base's config and weight files; {} for a hub name not on this disk."""
    if not base.is_dir():
        return {}
    pinned = sorted(path for path in base.iterdir()
                    if path.name == "config.json" or path.suffix in (".safetensors", ".bin"))
    return {path.name: _sha256(path) for path in pinned}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
