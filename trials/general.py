"""General knowledge kept: what a trial forgets of what its base model knew, and the rows that protect it.

Fine-tuning a chat model on private facts can make it answer everything with one of them ("What is
the capital of France?" -> a city from the training data). The probe (`eval.general`, by default
data/general/) measures that in every trial:

- `questions.jsonl`: short-answer general questions (qa.jsonl's shape, with `topic` and `split` in
  protect|check). The base model answers each once; those whose accepted answer appears, as whole
  words under the recall scorer's normalisation, in the first line of its reply are `known`.
  `general_retention` is the share of the `check` part's known questions a trial still answers right.
- `chat.jsonl`: open chat prompts (explain, list, rewrite, advise). The base model's own replies are
  kept as token ids; `general_drift` is the mean per-token KL divergence KL(base || trial) on the
  `check` replies, teacher-forced: one forward pass with the adapter and one with it disabled (peft's
  `disable_adapter()`), no generation and no second copy of the model.

The `protect` part (questions and prompts, with the base model's own replies) may be trained on
(`training.general_replay`, `training.kl_to_base`: self-distillation that keeps the base's behaviour);
`check` never is.

The base model's answers depend only on the base model, the probe, the generation budget and the
batches they were generated in, so they are computed once and cached by that fingerprint (`base_answers`),
like the embedded models. In bf16 a question's greedy answer changes with the padding its batch brings (on
SmolLM2, 14 of 342 known/not-known verdicts moved between batch 1 and batch 64), so a reference taken in
other batches than a trial's made the base model itself "forget" 4 of the 84 check questions it knew
(retention 0.952 of the bare base, measured on the CPU). So the base answers twice: every question, to find
those it may know, then those again, each split in its own batches; `known` are the questions right both
times, and a trial is asked exactly the second pass's batches. The bare base keeps all it knew by
construction, and a trial asks about half the probe (on SmolLM2 ~190 of 342 questions) instead of all of
it; `adapter_shrink` asks the protect part alone for each factor it tries.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trials.data import DataError, QARow, _read_text
from trials.formatting import IGNORE_INDEX, Example, collate, prompt_ids
from trials.model_cache import json_cache_path, model_identity, write_json_atomically
from trials.recall import generate_token_ids, normalize

DEFAULT_PROBE = Path(__file__).resolve().parent.parent / "data" / "general"
QUESTIONS, CHAT = "questions.jsonl", "chat.jsonl"
PROBE_SPLITS = ("protect", "check")
# Generation budgets of the base model's replies: a short answer fits in 24 tokens, and a reply's
# first line is all that is scored; a chat reply's first 48 tokens carry its style and content.
ANSWER_TOKENS, CHAT_TOKENS = 24, 48
RECIPE = 4  # bump when what is cached (or how it is computed) changes
CONTENT = ("question", "answer", "aliases", "topic", "split")  # what the probe's fingerprint is of


@dataclass(frozen=True)
class ProbeQuestion(QARow):
    """A probe question: a QA row (split protect|check) with its topic."""

    topic: str = ""


@dataclass(frozen=True)
class ChatPrompt:
    prompt: str
    kind: str
    split: str


@dataclass
class Probe:
    questions: list[ProbeQuestion]
    prompts: list[ChatPrompt]
    fingerprint: str


def _problems_of(obj, fields: dict[str, bool]) -> list[str]:
    """What is wrong with one probe line; `fields` maps each allowed key to whether it is required."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    problems = []
    for key, required in fields.items():
        value = obj.get(key)
        if key == "aliases":
            if not isinstance(value if value is not None else [], list) or not all(
                    isinstance(alias, str) and alias.strip() for alias in value or []):
                problems.append("field 'aliases' must be a list of non-empty strings")
        elif value is None:
            if required:
                problems.append(f"missing field '{key}'")
        elif not isinstance(value, str) or not value.strip():
            problems.append(f"field '{key}' must be a non-empty string")
    if isinstance(obj.get("split"), str) and obj["split"].strip() and obj["split"] not in PROBE_SPLITS:
        problems.append(f"unknown split '{obj['split']}' (expected protect or check)")
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}")
    return problems


def _read_lines(path: Path, fields: dict[str, bool], problems: list[str]) -> list[tuple[int, dict]]:
    """The file's valid JSON objects, each with its line number."""
    text = _read_text(path, "general probe file", "eval.general", problems)
    if text is None:
        return []
    objects = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{path}:{number}: invalid JSON: {error.msg} (column {error.colno}) (eval.general)")
            continue
        found = _problems_of(obj, fields)
        problems += [f"{path}:{number}: {problem} (eval.general)" for problem in found]
        if not found:
            objects.append((number, obj))
    if not objects and not problems:
        problems.append(f"{path}: no rows (eval.general)")
    return objects


def load_probe(path: Path) -> Probe:
    """A probe directory (questions.jsonl, and chat.jsonl if present) or one questions file; raises
    DataError naming every bad line, before any model is loaded."""
    path = Path(path)
    questions_file, chat_file = (path / QUESTIONS, path / CHAT) if path.is_dir() else (path, None)
    problems: list[str] = []
    questions = [ProbeQuestion(obj["question"].strip(), obj["answer"].strip(),
                               tuple(a.strip() for a in obj.get("aliases") or []), obj["split"], number,
                               f"{questions_file}:{number}", obj.get("topic", ""))
                 for number, obj in _read_lines(questions_file, {"question": True, "answer": True, "aliases": False,
                                                         "topic": False, "split": True}, problems)]
    prompts = []
    if chat_file is not None and chat_file.exists():
        prompts = [ChatPrompt(obj["prompt"].strip(), obj.get("kind", ""), obj["split"])
                   for _, obj in _read_lines(chat_file, {"prompt": True, "kind": False, "split": True}, problems)]
    if questions and not any(q.split == "check" for q in questions):
        problems.append(f"{questions_file}: no 'check' questions: nothing to measure retention on (eval.general)")
    if problems:
        raise DataError(problems)
    # Of the content alone: where a question sits in its file does not change what the base answers.
    content = [{key: getattr(q, key) for key in CONTENT} for q in questions]
    digest = hashlib.sha256(json.dumps([content, [asdict(p) for p in prompts]]).encode())
    return Probe(questions, prompts, digest.hexdigest()[:16])


def mentions(reply: str, accepted: tuple[str, ...]) -> bool:
    """An accepted answer appears, as whole words, in the reply's first line (normalised as exact
    recall normalises): "The capital of France is Paris." knows Paris; "18" does not know "8"."""
    first = next((line for line in reply.strip().split("\n") if line.strip()), "")
    got = normalize(first)
    return any(re.search(rf"(?<!\w){re.escape(normalize(answer))}(?!\w)", got)
               for answer in accepted if normalize(answer))


@dataclass
class BaseAnswers:
    """The base model's replies to the probe, in probe order: text and token ids (EOS kept when it ended);
    `asked`: per split, the questions it answered right the first time (probe indices, in order), asked
    again in batches of `batch_size`: the batches a trial is asked in; `known`: right both times."""

    replies: list[str]
    reply_ids: list[list[int]]
    known: list[bool]
    chat_replies: list[str]
    chat_ids: list[list[int]]
    batch_size: int
    asked: dict[str, list[int]]

    def known_count(self, probe: Probe, split: str | None = None) -> int:
        return sum(k for k, q in zip(self.known, probe.questions, strict=True) if split in (None, q.split))


def _generate(model, tokenizer, prompts: list[str], budget: int, batch_size: int, device, bf16):
    ids = generate_token_ids(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=budget,
                             device=device, bf16=bf16)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in ids], ids


def _answers_path(probe: Probe, base_path: str, bf16: bool, batch_size: int) -> Path:
    return json_cache_path("general", RECIPE, model_identity(base_path), probe.fingerprint, ANSWER_TOKENS,
                           CHAT_TOKENS, bf16, batch_size)


def cached_base_answers(probe: Probe, base_path: str, bf16: bool, batch_size: int) -> BaseAnswers | None:
    """The base model's cached replies to the probe, or None: lets a caller skip loading the model."""
    path = _answers_path(probe, base_path, bf16, batch_size)
    return BaseAnswers(**json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None


def base_answers(model, tokenizer, probe: Probe, base_path: str, device: torch.device, bf16: bool,
                 batch_size: int) -> BaseAnswers:
    """The base model's replies to the probe, from the cache or generated now (by `model`, which must be
    the bare base, before any adapter) and cached atomically: trials running at once may both generate,
    and either's file is whole."""
    path = _answers_path(probe, base_path, bf16, batch_size)
    cached = cached_base_answers(probe, base_path, bf16, batch_size)
    if cached is not None:
        return cached
    replies, reply_ids = _generate(model, tokenizer, [q.question for q in probe.questions], ANSWER_TOKENS,
                                   batch_size, device, bf16)
    chat_replies, chat_ids = _generate(model, tokenizer, [p.prompt for p in probe.prompts], CHAT_TOKENS,
                                       batch_size, device, bf16)
    asked = {split: [i for i, (q, reply) in enumerate(zip(probe.questions, replies, strict=True))
                     if q.split == split and mentions(reply, q.accepted)] for split in PROBE_SPLITS}
    known = [False] * len(probe.questions)
    for indices in asked.values():  # the second pass, in the batches a trial will be asked in
        right = _right(model, tokenizer, probe.questions, indices, batch_size, device, bf16)
        for index, is_right in zip(indices, right, strict=True):
            known[index] = is_right
    answers = BaseAnswers(replies, reply_ids, known, chat_replies, chat_ids, batch_size, asked)
    write_json_atomically(path, asdict(answers))
    return answers


def share_right(model, tokenizer, questions: list[ProbeQuestion], batch_size: int, device, bf16: bool) -> float:
    """The share of `questions` a model answers right (an accepted answer in its reply's first line)."""
    right = _right(model, tokenizer, questions, list(range(len(questions))), batch_size, device, bf16)
    return sum(right) / len(right) if right else 0.0


def _right(model, tokenizer, questions: list[ProbeQuestion], indices: list[int], batch_size: int, device,
           bf16: bool) -> list[bool]:
    """Whether each of those questions, asked in batches in this order, is answered right."""
    replies, _ = _generate(model, tokenizer, [questions[i].question for i in indices], ANSWER_TOKENS, batch_size,
                           device, bf16)
    return [mentions(reply, questions[i].accepted) for i, reply in zip(indices, replies, strict=True)]


def reply_example(tokenizer, prompt: str, reply_ids: list[int], distill: bool = False) -> Example:
    """The prompt and a reply given as token ids, loss (or KL) on the reply."""
    prompt_part = prompt_ids(tokenizer, prompt)
    return Example(prompt_part + list(reply_ids), [IGNORE_INDEX] * len(prompt_part) + list(reply_ids),
                   prompt_tokens=len(prompt_part), distill=distill)


class GeneralCheck:
    """What a trial measures of the probe: the base's known `check` questions and its `check` chat replies.

    A split's questions are asked in the base's second-pass batches and order, so a question's padding is the
    one its base answer had (module docstring)."""

    def __init__(self, tokenizer, probe: Probe, base: BaseAnswers):
        self.probe_questions = probe.questions
        self.known = base.known
        self.asked = base.asked
        self.batch_size = base.batch_size
        self.drift_examples = [reply_example(tokenizer, p.prompt, ids)
                               for p, ids in zip(probe.prompts, base.chat_ids, strict=True)
                               if p.split == "check" and ids]
        self.base_known = base.known_count(probe, "check")

    def kept(self, model, tokenizer, device, bf16: bool,
             splits: tuple[str, ...] = PROBE_SPLITS) -> dict[str, list[bool]]:
        """{split: for each question of that split the base knew, whether the model still answers it right}.

        A question the model's adapter router sends to the base (trials/router.py) gets the base's own answer,
        which it knew: only those sent to the adapter are generated (with a router, nearly none of the probe)."""
        from trials.router import sent_to_adapter

        verdicts = {}
        for split in splits:
            indices = self.asked[split]
            sent = sent_to_adapter(model, tokenizer, [self.probe_questions[i].question for i in indices],
                                   batch_size=self.batch_size, device=device, bf16=bf16)
            asked = [index for index, to_adapter in zip(indices, sent, strict=True) if to_adapter]
            right = dict(zip(asked, _right(model, tokenizer, self.probe_questions, asked, self.batch_size, device,
                                           bf16) if asked else [], strict=True))
            verdicts[split] = [right.get(index, True) for index in indices if self.known[index]]
        return verdicts

    def measure(self, model, tokenizer, device, bf16: bool, batch_size: int,
                kept: dict[str, list[bool]] | None = None) -> dict[str, float]:
        """general_retention (over the known check questions, when there are any), general_protect_retention
        (the same over the protect part, which training may see) and general_drift; `kept`: this model's
        verdicts on the splits a caller already asked (`kept()`), so those are not generated twice."""
        metrics: dict[str, float] = {"general_known": float(self.base_known)}
        if any(self.known):
            verdicts_of = dict(kept or {})
            missing = tuple(split for split in PROBE_SPLITS if split not in verdicts_of)
            if missing:
                verdicts_of |= self.kept(model, tokenizer, device, bf16, missing)
            for split, verdicts in verdicts_of.items():
                if verdicts:
                    metrics["general_retention" if split == "check" else f"general_{split}_retention"] = (
                        sum(verdicts) / len(verdicts))
        if self.drift_examples:
            metrics["general_drift"] = drift(model, self.drift_examples, tokenizer.pad_token_id, device, bf16,
                                             batch_size)
        return metrics


@torch.no_grad()
def drift(model, examples: list[Example], pad_id: int, device: torch.device, bf16: bool, batch_size: int) -> float:
    """Mean per-token KL(base || model) on the labelled tokens: the adapter on, then disabled. A reply whose
    prompt the model's adapter router sends to the base (trials/router.py) is the base's own: it drifts by 0."""
    from trials.model import autocast
    from trials.router import routes
    from trials.train import kl_per_token, labelled_logits

    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        # The replies' labelled tokens (the first label, a prompt token's, is never one), routed or not.
        tokens += sum(label != IGNORE_INDEX for example in chunk for label in example.labels[1:])
        to_adapter = routes(model, [e.input_ids[: e.prompt_tokens] for e in chunk], pad_id, device, bf16)
        chunk = [example for example, sent in zip(chunk, to_adapter, strict=True) if sent]
        if not chunk:  # every reply the base's own
            continue
        inputs = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        labels = inputs.pop("labels")
        with autocast(device, bf16, model):
            logits, targets = labelled_logits(model, inputs, labels)
            with model.disable_adapter():
                base_logits, _ = labelled_logits(model, inputs, labels)
        mask = targets != IGNORE_INDEX
        total += float(kl_per_token(logits, base_logits)[mask].sum())
    model.train(was_training)
    return total / max(tokens, 1)


def protect_examples(tokenizer, probe: Probe, base: BaseAnswers) -> list[Example]:
    """The replay rows of training.general_replay: the base model's own replies to the protect questions
    and chat prompts (self-distillation: what it said, not the probe's answer)."""
    rows = [reply_example(tokenizer, q.question, ids, distill=True)
            for q, ids in zip(probe.questions, base.reply_ids, strict=True) if q.split == "protect" and ids]
    rows += [reply_example(tokenizer, p.prompt, ids, distill=True)
             for p, ids in zip(probe.prompts, base.chat_ids, strict=True) if p.split == "protect" and ids]
    return rows
