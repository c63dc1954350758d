"""One trial, top to bottom: validate data -> load model -> train + score each epoch -> save.

`run_trial` is the single code path behind `orchestrator trial` and every Ray Tune trial; the
caller gets each epoch's metrics through `on_epoch` (Tune reports them; returning True stops).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trials.config import TrialConfig
from trials.data import Knowledge, load_knowledge
from trials.formatting import answer_ids, passage_examples, qa_example
from trials.model import attach_method, load_base_model, load_tokenizer, pick_device, resolve_model, use_bf16
from trials.recall import generate_answers, score
from trials.train import Trainer

EpochCallback = Callable[[dict], bool | None]


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_examples(tokenizer, knowledge: Knowledge, config: TrialConfig):
    examples = [qa_example(tokenizer, row.question, row.answer) for row in knowledge.split("train")]
    if config.training.include_documents:
        for passage in knowledge.passages:
            examples += passage_examples(tokenizer, passage, config.data.max_length)
    return examples


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_trial(config: TrialConfig, output_dir: Path, on_epoch: EpochCallback | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Train one adapter and score it; writes metrics.json, adapter/ and predictions_val.jsonl.

    A trial that fails (out of memory, interrupted, a bug) still leaves metrics.json saying so,
    then re-raises: a failure is a result too.
    """
    output_dir = Path(output_dir)
    knowledge = load_knowledge(config.data)  # raises DataError before any model is loaded
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _train_and_score(config, knowledge, output_dir, on_epoch, log)
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        failure = {"status": status, "error": f"{type(error).__name__}: {error}", "method": config.method.name}
        (output_dir / "metrics.json").write_text(json.dumps(failure, indent=2) + "\n")
        raise


def _train_and_score(config: TrialConfig, knowledge: Knowledge, output_dir: Path,
                     on_epoch: EpochCallback | None, log: Callable[[str], None]) -> dict:
    set_seed(config.training.seed)

    device = pick_device(config.training)
    bf16 = use_bf16(config.training, device)
    base_path = resolve_model(config.model)
    tokenizer = load_tokenizer(base_path)
    model = attach_method(load_base_model(base_path, device, bf16), config.method,
                          config.training.gradient_checkpointing)
    trainable, total = count_parameters(model)
    log(f"{config.method.name}: {trainable:,} trainable of {total:,} parameters on {device}"
        f"{' (bf16)' if bf16 else ''}")

    examples = build_examples(tokenizer, knowledge, config)
    trainer = Trainer(model, examples, config.training, config.method.learning_rate,
                      tokenizer.pad_token_id, device, bf16)
    train_rows, val_rows = knowledge.split("train"), knowledge.split("val")
    max_new_tokens = config.eval.max_new_tokens or max(
        len(answer_ids(tokenizer, answer)) for row in knowledge.qa for answer in row.accepted) + 8

    def evaluate(rows):
        answers = generate_answers(model, tokenizer, [r.question for r in rows],
                                   batch_size=config.eval.batch_size, max_new_tokens=max_new_tokens, device=device)
        return score(rows, answers)

    per_epoch_train = train_rows[: config.eval.max_train_questions] if config.eval.max_train_questions else train_rows
    total_tokens, train_seconds, eval_seconds, history = 0, 0.0, 0.0, []
    metrics: dict = {}
    val_records: list[dict] = []
    for epoch in range(1, config.training.epochs + 1):
        stats = trainer.train_epoch()
        total_tokens += stats.tokens
        train_seconds += stats.seconds
        eval_started = time.perf_counter()
        val_recall, val_records = evaluate(val_rows)
        last = epoch == config.training.epochs or val_recall >= config.training.stop_at_val_recall
        train_recall, _ = evaluate(train_rows if last else per_epoch_train)
        eval_seconds += time.perf_counter() - eval_started
        metrics = {
            "epoch": epoch,
            "loss": stats.loss,
            "val_exact_recall": val_recall,
            "train_exact_recall": train_recall,
            "train_tokens_per_second": total_tokens / train_seconds,
            "epoch_tokens_per_second": stats.tokens_per_second,
            "peak_memory_mb": peak_memory_mb(device),
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
        }
        history.append(metrics)
        log(f"epoch {epoch:3d}  loss {stats.loss:.4f}  val_exact_recall {val_recall:.3f}  "
            f"train_exact_recall {train_recall:.3f}  {stats.tokens_per_second:,.0f} tok/s")
        stop_requested = bool(on_epoch(metrics)) if on_epoch else False
        if last or stop_requested:
            break

    model.save_pretrained(output_dir / "adapter")
    tokenizer.save_pretrained(output_dir / "adapter")
    _write_jsonl(output_dir / "predictions_val.jsonl", val_records)
    summary = {
        "status": "finished",
        "val_exact_recall": metrics["val_exact_recall"],
        "train_exact_recall": metrics["train_exact_recall"],
        "train_tokens_per_second": metrics["train_tokens_per_second"],
        "epochs": metrics["epoch"],
        "train_tokens": total_tokens,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "peak_memory_mb": metrics["peak_memory_mb"],
        "trainable_parameters": trainable,
        "total_parameters": total,
        "method": config.method.name,
        "base_model": config.model,
        "data_fingerprint": knowledge.fingerprint,
        "history": history,
    }
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output_dir / "trial_config.json").write_text(config.model_dump_json(indent=2) + "\n")
    return summary
