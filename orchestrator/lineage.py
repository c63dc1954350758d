"""Where an incremental sweep starts, and the facts a promoted version carries with it (its lineage).

A promoted version's model holds, beside its adapter, `knowledge/`: `qa.jsonl` with every fact the
version was trained and tested on, all splits (for a version that was itself incremental, the facts
it kept too), and `documents/`. A sweep started from it (`orchestrator sweep CONFIG --from
models:/NAME@champion`) continues its adapter and keeps those facts: `data.retain` points at that
qa.jsonl, so the user passes only the new facts.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException

from orchestrator import run_record, tracking
from orchestrator.errors import SweepError
from orchestrator.registry_model import ADAPTER, KNOWLEDGE, read_version

QA_FILE, DOCUMENTS = "qa.jsonl", "documents"


@dataclass
class Start:
    """An adapter to continue and, when its lineage is known, the old facts to keep."""

    source: str
    adapter: Path
    knowledge: Path | None = None  # a knowledge/ directory
    model_name: str | None = None
    version: str | None = None

    @property
    def retain(self) -> Path | None:
        return self.knowledge / QA_FILE if self.knowledge else None


def resolve_start(source: str, directory: Path) -> Start:
    """`--from`: models:/NAME@ALIAS or models:/NAME/VERSION (a registered version), runs:/RUN_ID or a
    bare run id (a trial run), or a local adapter directory (no lineage: give data.retain yourself).
    Whatever is remote is downloaded into `directory`."""
    if Path(source).is_dir():
        return Start(source, Path(source).resolve())
    directory.mkdir(parents=True, exist_ok=True)
    if source.startswith("models:/"):
        return _from_version(source, directory)
    return _from_trial_run(source.removeprefix("runs:/").strip("/"), directory)


def _from_version(source: str, directory: Path) -> Start:
    import mlflow

    tracking.use_store()
    client = tracking.client()
    name, _, rest = source.removeprefix("models:/").partition("@")
    try:
        if rest:
            version = client.get_model_version_by_alias(name, rest)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
        model_dir = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(directory)))
    except MlflowException as error:
        raise SweepError(f"--from {source}: no such registered model version ({error.message})") from None
    paths, _ = read_version(model_dir)
    return Start(source, paths[ADAPTER], paths.get(KNOWLEDGE), version.name, str(version.version))


def _from_trial_run(run_id: str, directory: Path) -> Start:
    from trials.config import TrialConfig

    client = tracking.client()
    try:
        for name in (run_record.ADAPTER, run_record.TRIAL_CONFIG):
            client.download_artifacts(run_id, name, str(directory))
    except (MlflowException, OSError) as error:
        raise SweepError(f"--from {run_id}: not a local adapter directory, a model URI or a trial run with an "
                         f"adapter ({error})") from None
    config = TrialConfig.model_validate_json((directory / run_record.TRIAL_CONFIG).read_text(encoding="utf-8"))
    return Start(run_id, directory / run_record.ADAPTER, write_knowledge(directory / KNOWLEDGE, config))


def write_knowledge(directory: Path, config) -> Path:
    """knowledge/ for a trial config: its facts (all splits) and documents, plus the facts it kept
    (data.retain, with the documents/ beside that file when there are some)."""
    from trials.data import load_knowledge
    from trials.evaluate import retained_knowledge

    old = retained_knowledge(config)
    rows = [*(old.qa if old else []), *load_knowledge(config.data).qa]
    documents = list(config.data.documents)
    if config.data.retain and (config.data.retain.parent / DOCUMENTS).is_dir():
        documents = sorted((config.data.retain.parent / DOCUMENTS).iterdir()) + documents
    (directory / DOCUMENTS).mkdir(parents=True, exist_ok=True)
    for index, document in enumerate(documents):  # numbered: two batches may both have a staff.txt
        name = re.sub(r"^\d{3}-", "", Path(document).name)  # not 000-000-... after a few versions
        shutil.copyfile(document, directory / DOCUMENTS / f"{index:03d}-{name}")
    with open(directory / QA_FILE, "w", encoding="utf-8") as handle:
        for row in rows:
            record = {"question": row.question, "answer": row.answer, "split": row.split}
            if row.aliases:
                record["aliases"] = list(row.aliases)
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return directory
