"""Typed configuration of one trial, and the YAML loader every entry point uses.

Every field carries its help text; unknown keys are rejected; all problems in a file are reported
at once, each with the file, the line and the dotted key path, before anything expensive runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, NonNegativeInt, PositiveInt, ValidationError, field_validator, model_validator

from trials.methods import METHOD_NAMES, Method, check_base, default_method, method_of_adapter
from trials.methods.base import Strict

EMBEDDED_MODEL = "embedded:tiny-llama"  # the default: built here, random, for fast tests and the demo
SMOLLM2_MODEL = "embedded:smollm2-135m-instruct"  # a real pretrained chat model from a PyPI wheel
EMBEDDED_MODELS = (EMBEDDED_MODEL, SMOLLM2_MODEL)
# eval.objective -> the metric of trials.recall.metrics_of that a sweep optimises (val_<metric>) and ranks
# trials by; EvalConfig.objective lists the same keys.
OBJECTIVE_METRICS = {"exact_recall": "exact_recall", "contains_recall": "contains_recall",
                     "token_f1": "token_f1", "rouge_l": "rouge_l_recall"}


Share = Annotated[float, Field(ge=0.0, le=1.0)]  # a fraction of something, 0 to 1


def objective_metric(objective: str | None) -> str:
    """The metric of trials.recall.metrics_of an eval.objective names (exact recall for runs logged before it)."""
    return OBJECTIVE_METRICS[objective or "exact_recall"]

# The general-knowledge probe written for this project (trials/general.py reads it).
DEFAULT_PROBE = Path(__file__).resolve().parent.parent / "data" / "general"


class HubDataset(Strict):
    hub: str = Field(min_length=1, description="Hugging Face hub dataset, 'owner/name', read with "
                                              "datasets.load_dataset (downloaded once into the datasets cache).")
    subset: str | None = Field(None, description="The dataset's configuration (load_dataset's `name`), if several.")
    revision: str | None = Field(None, description="Branch, tag or commit; pin one so reruns read the same rows.")


class QAColumns(Strict):
    question: str = Field("question", min_length=1, description="Column holding the question.")
    answer: str = Field("answer", min_length=1, description="Column holding the expected answer.")
    aliases: str | None = Field(
        None, description="Column of other accepted answers: a list of strings, or one string with the answers "
                          "separated by '|' (CSV has no lists). Unset: the column 'aliases' where there is one.")
    split: str | None = Field(
        None, description="Column holding train|val|test. Unset: the column 'split' where there is one, else the "
                          "dataset's own splits: train -> train; validation, valid, val, dev -> val; test -> test.")


class DataConfig(Strict):
    documents: list[Path] = Field(
        default_factory=list,
        description="UTF-8 text files; passages are separated by blank lines and trained as plain text.",
    )
    qa: Path | HubDataset = Field(
        description="The question/answer rows: a qa.jsonl file (question, answer, optional aliases, split in "
                    "train|val|test), a .csv, .parquet, .json or .jsonl table, a dataset directory (save_to_disk, or "
                    "data files load_dataset understands), or {hub: owner/name} for a Hugging Face hub dataset.")
    columns: QAColumns | None = Field(
        None, description="Which columns of a table or dataset are question, answer, aliases and split; columns not "
                          "named are ignored. Unset: a .jsonl file is read as strict qa.jsonl, anything else with the "
                          "default column names.")
    max_length: int = Field(512, gt=8, description="Longest training sequence in tokens; longer passages are cut into chunks.")
    retain: Path | None = Field(
        None, description="Old facts to keep (a qa.jsonl, as qa): their val rows are scored every epoch as "
                          "retention_exact_recall, and training.replay_fraction of their train rows is mixed into "
                          "each epoch. An incremental sweep (--from a registered version) sets it from the lineage.")

    @field_validator("qa", mode="before")
    @classmethod
    def _path_or_hub(cls, value: Any) -> Any:
        # Validated here rather than by the union itself, whose errors carry pydantic's internal member
        # names as keys ("data.qa.lax-or-strict[...]"); this way every problem is reported at data.qa.
        if isinstance(value, dict):
            try:
                return HubDataset.model_validate(value)
            except ValidationError as error:
                raise ValueError("; ".join(
                    f"{'.'.join(map(str, item['loc']))}: "
                    + ("unknown key" if item["type"] == "extra_forbidden" else item["msg"])
                    for item in error.errors())) from None
        if not isinstance(value, (str, Path, HubDataset)):
            raise ValueError("must be a path or {hub: owner/name}")
        return value


class TrainingConfig(Strict):
    epochs: PositiveInt = Field(10, description="Passes over the training examples.")
    batch_size: PositiveInt = Field(16, description="Examples per optimiser micro-batch.")
    gradient_accumulation_steps: PositiveInt = Field(1, description="Micro-batches per optimiser step.")
    optimizer: Literal["adamw", "sgd", "adafactor"] = Field(
        "adamw", description="The optimiser of the trainable parameters, at the method's learning rate: adamw "
                             "(torch.optim.AdamW); sgd (momentum 0.9: one state tensor a parameter where adamw "
                             "keeps two); adafactor (transformers' Adafactor, factored second moments, its own "
                             "step sizing off so the learning rate and schedule apply).")
    weight_decay: float = Field(0.0, ge=0.0, description="Weight decay on trainable parameters (decoupled for "
                                                         "adamw and adafactor, an L2 term for sgd).")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Fraction of optimiser steps spent warming up.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field("linear", description="Decay after warm-up.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(0, description="Seeds data order, adapter init and dropout.")
    bf16: Literal["auto"] | bool = Field(
        "auto", description="bf16 autocast, the frozen base held in bf16 and the adapter in float32; auto = on "
                            "where the GPU supports it; true also on the CPU (fast on AVX512-BF16).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory (7B models).")
    neftune_alpha: float = Field(
        0.0, ge=0.0, description="NEFTune: uniform noise added to the input embeddings while training, of size "
                                 "alpha / sqrt(tokens x hidden size) a batch (transformers' neftune_post_forward_hook; "
                                 "HF Trainer's neftune_noise_alpha). 0 = off; the paper used 5 to 15.")
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernel (transformers' attn_implementation); eager is faster on the CPU "
                            "for short QA sequences, sdpa everywhere else.")
    include_documents: bool = Field(True, description="Train on the document passages as well as the train QA pairs.")
    question_word_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Each epoch, half the train questions, drawn afresh, are asked with each "
                                         "word left out at this probability (trials/augment.py): the model learns "
                                         "which words name a fact, not one wording, and answers new phrasings "
                                         "better. 0 = off.")
    replay_fraction: Share = Field(
        0.0, description="Share of the old facts' train rows (data.retain) mixed into each epoch, "
                                         "drawn afresh every epoch: 0 = train on the new facts alone (the seed "
                                         "recipe's way), 1 = all old rows every epoch.")
    general_replay: Share = Field(
        0.0, description="Share of the general probe's protect rows (the base model's own replies "
                                         "to its protect questions and chat prompts) mixed into each epoch, drawn "
                                         "afresh every epoch: self-distillation that keeps what the base knew. "
                                         "0 = off. Needs eval.general.")
    kl_to_base: float = Field(
        0.0, ge=0.0, description="On the general_replay rows, the weight of the KL divergence to the base model "
                                 "(the same model, adapter disabled). Up to 1 it trades against the "
                                 "cross-entropy on the base's reply: 0 = cross-entropy only, 1 = KL only. Above 1 "
                                 "the KL alone, weighted that many times a new fact's token: a stronger pull "
                                 "back to the base against the optimiser's steps on the new facts.")
    general_first_token_weight: float = Field(
        1.0, ge=1.0, description="On the general_replay rows, how many times the reply's first token counts. "
                                 "The first token decides a reply's form: a fine-tuned model's lost answers "
                                 "mostly open differently ('To find half of 10, ...' for 'Half of 10 is 5'), "
                                 "and its KL to the base is twice the later tokens' (docs/general-knowledge.md)."
                                 " 1 = every token alike.")
    adapter_shrink: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(
        default_factory=list, description="LoRA only. After the last epoch, the trained update is tried scaled "
                                          "down by each of these factors (its B matrices times the factor: a "
                                          "step back toward the base model). Eligible: val objective within "
                                          "adapter_shrink_tolerance of the full update's and, with the general "
                                          "probe on, no fewer of its protect questions the base knew kept; the "
                                          "eligible factor keeping the most of those (the smallest on a tie) is "
                                          "kept, saved and measured. A smaller update forgets less of what the "
                                          "base knew (docs/general-knowledge.md). [] = off.")
    adapter_shrink_tolerance: Share = Field(
        0.0, description="How far below the full update's val objective a shrunk one may score "
                                         "and still be kept (training.adapter_shrink).")
    adapter_router: bool = Field(
        False, description="Route each question (trials/router.py): the adapter answers those like the train "
                           "questions (and data.retain's), the base model, adapter disabled, the rest. A logistic "
                           "regression on the base's hidden state at the prompt's last token, fitted before "
                           "training on the train questions against the general probe's protect questions and "
                           "prompts; saved beside the adapter (router.json) and used by every answer after: "
                           "scoring, the probe, ask, serve. Needs eval.general.")
    stop_at_val_recall: float = Field(1.0, gt=0.0, le=1.0, description="Stop once val reaches this, by "
                                                                     "eval.objective's metric (exact recall by default).")
    patience: PositiveInt | None = Field(
        None, description="Stop once the val objective (eval.objective's metric) has not beaten its best for this "
                          "many epochs in a row: training.epochs is then a maximum. The adapter of the last epoch "
                          "is the one saved. null = off, every trial runs its epochs.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = the GPU assigned to this process, else CPU.")


class EvalConfig(Strict):
    batch_size: PositiveInt = Field(64, description="Questions per batched greedy generation.")
    max_new_tokens: PositiveInt | None = Field(
        None, description="Generation limit; default = longest expected answer in tokens + 8."
    )
    max_train_questions: PositiveInt | None = Field(
        None, description="Score train recall each epoch on at most this many train questions (all at the end)."
    )
    recall_every: NonNegativeInt = Field(
        1, description="Generate and score answers (val, the train sample, old facts) every this many epochs, and "
                       "always at eval.general_epochs (a sweep's rungs) and a trial's last epoch; 0 = only there. "
                       "Generation is most of a trial's evaluation: between scored epochs a trial reports its val "
                       "answers' teacher-forced loss (val_answer_loss) alone. training.patience and "
                       "stop_at_val_recall are judged at scored epochs.")
    general: Path | None = Field(
        DEFAULT_PROBE, description="The general-knowledge probe (trials/general.py): a directory holding "
                                   "questions.jsonl (question, answer, aliases, topic, split protect|check) and "
                                   "optionally chat.jsonl (prompt, kind, split), or one questions file. null: off. "
                                   "Default: data/general, written for this project.")
    general_epochs: list[int] = Field(
        default_factory=list, description="Epochs at which the probe is scored, besides a trial's last; a sweep "
                                          "sets them to the early-stopping rungs.")
    general_min_known: int = Field(
        20, ge=1, description="The general floor (sweep.general_floor, promotion) applies only when the base model "
                              "answers at least this many check questions right: below that, retention is noise, and "
                              "trials do not ask the probe (no general_* metrics).")
    objective: Literal["exact_recall", "contains_recall", "token_f1", "rouge_l"] = Field(
        "exact_recall", description="What a sweep optimises and ranks trials by, on val (trials/recall.py): "
                                    "exact_recall (the whole answer, exactly); contains_recall (the answer inside "
                                    "the reply); token_f1 (mean SQuAD token F1); rouge_l (mean ROUGE-L recall), for "
                                    "answers that are sentences. training.stop_at_val_recall, warm start and "
                                    "promotion's ranking and gates use it too; the incremental retention floor "
                                    "and general retention stay on their own pass (exact recall, the answer "
                                    "mentioned).")

    @field_validator("general", mode="before")
    @classmethod
    def _false_is_off(cls, value: Any) -> Any:
        return None if value is False else value


class TrialConfig(Strict):
    model: str = Field(EMBEDDED_MODEL, description="Base model: a local path, a hub name, or an embedded model "
                                                  f"({', '.join(EMBEDDED_MODELS)}).")
    data: DataConfig
    init_adapter: Path | None = Field(
        None, description="A saved peft adapter directory to continue training (a warm start: fresh optimiser "
                          "and schedule, unlike a resume). Its method and shape are kept; `method` then only "
                          "needs the learning rate.")
    method: Method = Field(default_factory=default_method)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _replay_needs_the_probe(self):
        if self.training.general_replay > 0 and self.eval.general is None:
            raise ValueError("training.general_replay needs eval.general, the probe whose protect rows it replays")
        if self.training.adapter_router and self.eval.general is None:
            raise ValueError("training.adapter_router needs eval.general, the probe whose protect questions it "
                             "learns to send to the base model")
        return self

    @field_validator("init_adapter")
    @classmethod
    def _adapter_fits_the_base(cls, init_adapter, info):
        if init_adapter is not None and (info.context or {}).get(USER_CONFIG) and "model" in info.data:
            check_base(init_adapter, info.data["model"])
        return init_adapter

    @field_validator("method")
    @classmethod
    def _method_of_init_adapter(cls, method, info):
        # Only for a config the user wrote (see `validate`): a saved trial_config.json already holds the
        # adapter's method, and must load where the adapter it started from is long gone.
        init_adapter = info.data.get("init_adapter")
        if init_adapter is None or not (info.context or {}).get(USER_CONFIG):
            return method
        return method_of_adapter(init_adapter, method)

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a local path, a hub model or " + EMBEDDED_MODEL)
        if value.startswith("embedded:") and value not in EMBEDDED_MODELS:
            raise ValueError(f"unknown embedded model {value!r}; embedded models: {', '.join(EMBEDDED_MODELS)}")
        if value == SMOLLM2_MODEL:
            from trials.smollm2 import gguf_path

            gguf_path()  # a missing package is a config error, before anything is loaded
        return value


USER_CONFIG = "user_config"  # validation context: the config comes from the user's YAML and --set


class ConfigError(ValueError):
    """Every problem found in one config, each already prefixed with file:line: key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))


# Paths inside a config file are relative to that file, so a config works from any directory;
# paths given with --set are relative to the current directory, like any command-line path.
PATH_KEYS = (("data", "qa"), ("data", "documents"), ("data", "retain"), ("init_adapter",), ("eval", "general"))


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each dotted key path in a YAML document to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = path + (str(key_node.value),)
                lines[key_path] = key_node.start_mark.line + 1
                walk(value_node, key_path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[path + (str(index),)] = item.start_mark.line + 1
                walk(item, path + (str(index),))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        return str((base / value).resolve())
    if isinstance(value, list):
        return [_resolve(item, base) for item in value]
    return value


def _resolve_paths(raw: dict, base: Path) -> None:
    for *sections, key in PATH_KEYS:
        block = raw
        for section in sections:
            block = block.get(section) if isinstance(block, dict) else None
        if isinstance(block, dict) and key in block:
            block[key] = _resolve(block[key], base)


def _apply_override(raw: dict, assignment: str) -> tuple[str, ...]:
    """Set one dotted key from a --set key=value (value parsed as YAML); return the key path."""
    key, equals, text = assignment.partition("=")
    path = tuple(part for part in key.strip().split(".") if part)
    if not equals or not path:
        raise ConfigError([f"--set {assignment}: expected key=value"])
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError as error:
        raise ConfigError([f"--set {assignment}: not valid YAML: {getattr(error, 'problem', error)}"]) from None
    if path in PATH_KEYS:
        value = _resolve(value, Path.cwd())
    block = raw
    for depth, part in enumerate(path[:-1]):
        block = block.setdefault(part, {})
        if not isinstance(block, dict):
            raise ConfigError([f"--set {assignment}: {'.'.join(path[: depth + 1])} is not a mapping"])
    block[path[-1]] = value
    return path


def load_raw(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, dict[tuple[str, ...], str]]:
    """Read YAML, resolve relative paths, apply --set overrides.

    Returns the raw mapping and, for every key path, where it came from ("file:line" or "--set key").
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read config: {error.strerror}"]) from None
    except UnicodeDecodeError as error:
        line = error.object[:error.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text (byte {error.object[error.start]:#x})"]) from None
    try:
        raw = yaml.safe_load(text) or {}
        key_lines = _key_lines(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(error, 'problem', error)}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}:1: the top level must be a mapping of keys"])
    _resolve_paths(raw, path.parent)
    origins = {key: f"{path}:{line}" for key, line in key_lines.items()}
    for assignment in overrides:
        key = _apply_override(raw, assignment)
        origins = {k: v for k, v in origins.items() if k[: len(key)] != key}
        origins[key] = f"--set {'.'.join(key)}"
    return raw, origins


def _where(loc: tuple, origins: dict[tuple[str, ...], str], fallback: str) -> str:
    """The most specific known origin of an error location (pydantic adds union tags to loc).

    An error on a whole section (a method's own check) names the --set overrides inside it, if any:
    they changed it, not the line where the file opens the section.
    """
    parts = tuple(str(part) for part in loc)
    overrides = [origin for key, origin in origins.items()
                 if len(key) > len(parts) > 0 and key[:len(parts)] == parts and origin.startswith("--set ")]
    if overrides:
        return ", ".join(overrides)
    for end in range(len(parts), 0, -1):
        if parts[:end] in origins:
            return origins[parts[:end]]
    return fallback


def format_validation_error(error: ValidationError, origins: dict[tuple[str, ...], str], source: str) -> ConfigError:
    problems = []
    for item in error.errors():
        # Discriminated unions put the tag ("lora") into loc; it is not a key the user wrote.
        loc = tuple(part for part in item["loc"] if part not in METHOD_NAMES or item["loc"][0] != "method")
        if item["type"] == "method_name" and isinstance(item["input"], dict):
            loc += ("name",)  # pydantic places it on the method; it is about the name the user wrote
        key = ".".join(str(part) for part in loc) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key" + (" (not valid for this method)" if loc and loc[0] == "method" else "")
        where = _where(loc, origins, source)
        message = message.removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where == f"--set {key}" else f"{where}: {key}: {message}")
    return ConfigError(problems)


def validate(model_cls: type[BaseModel], raw: dict, origins: dict, source: str) -> Any:
    try:
        return model_cls.model_validate(raw, context={USER_CONFIG: True})
    except ValidationError as error:
        raise format_validation_error(error, origins, source) from None


def load_config(path: Path, overrides: list[str] | tuple[str, ...] = (), model_cls: type[BaseModel] = TrialConfig):
    raw, origins = load_raw(path, overrides)
    return validate(model_cls, raw, origins, str(path))
