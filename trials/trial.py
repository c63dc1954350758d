"""One trial, top to bottom: validate data -> load model -> train + score each epoch -> save.

`run_trial` is the single code path behind `orchestrator trial` and every Ray Tune trial; the
caller gets each epoch's metrics through `on_epoch` (Tune reports them; returning True stops).
"""

from __future__ import annotations

import json
import pickle
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trials.config import TrialConfig, objective_metric
from trials.data import Knowledge, load_knowledge
from trials.evaluate import generation_budget, retained_knowledge, score_rows
from trials.formatting import passage_examples, qa_example
from trials.general import GeneralCheck, Probe, base_answers, load_probe, protect_examples
from trials.ledger import LEDGER, ledger_rows, read_jsonl
from trials.model import attach_method, load_base_model, load_tokenizer, pick_device, resolve_model, use_bf16
from trials.recall import metrics_of
from trials.shrink import Verdict, choose_shrink
from trials.train import Trainer, answer_loss

EpochCallback = Callable[[dict, Path | None], bool | None]


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
              log: Callable[[str], None] = print, checkpoint_each_epoch: bool = False,
              resume_from: Path | None = None, trial_id: str | None = None) -> dict:
    """Train one adapter and score it; writes metrics.json, adapter/, predictions_val.jsonl and
    ledger.jsonl (trials/ledger.py: each val question's score and pass at every scored epoch, its rows
    tagged with `trial_id` when given).

    `on_epoch(metrics, checkpoint_dir)` sees every epoch (returning True stops the trial); with
    `checkpoint_each_epoch` the checkpoint holds everything `resume_from` needs to continue.

    A trial that fails (out of memory, interrupted, a bug) still leaves metrics.json saying so,
    then re-raises: a failure is a result too.
    """
    output_dir = Path(output_dir)
    knowledge = load_knowledge(config.data)  # raises DataError before any model is loaded
    retained = retained_knowledge(config)
    probe = load_probe(config.eval.general) if config.eval.general else None  # and so does the probe
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _train_and_score(config, knowledge, retained, probe, output_dir, on_epoch, log,
                                checkpoint_each_epoch, resume_from, trial_id)
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        failure = {"status": status, "error": f"{type(error).__name__}: {error}", "method": config.method.name}
        (output_dir / "metrics.json").write_text(json.dumps(failure, indent=2) + "\n")
        raise


def _train_and_score(config: TrialConfig, knowledge: Knowledge, retained: Knowledge | None, probe: Probe | None,
                     output_dir: Path, on_epoch: EpochCallback | None, log: Callable[[str], None],
                     checkpoint_each_epoch: bool, resume_from: Path | None, trial_id: str | None) -> dict:
    set_seed(config.training.seed)
    device = pick_device(config.training)
    bf16 = use_bf16(config.training, device)
    base_path = resolve_model(config.model)
    tokenizer = load_tokenizer(base_path)
    base_model = load_base_model(base_path, device, bf16, config.training.attention)
    # The base model's replies to the general probe: from the cache, or generated now, before an adapter exists.
    base = base_answers(base_model, tokenizer, probe, base_path, device, bf16, config.eval.batch_size) if probe else None
    general = GeneralCheck(tokenizer, probe, base) if probe else None
    model = attach_method(base_model, config.method, config.training.gradient_checkpointing, config.init_adapter)
    trainable, total = count_parameters(model)
    log(f"{config.method.name}: {trainable:,} trainable of {total:,} parameters on {device}"
        f"{' (bf16)' if bf16 else ''}{f', from {config.init_adapter}' if config.init_adapter else ''}")

    examples = build_examples(tokenizer, knowledge, config)
    replay = [qa_example(tokenizer, row.question, row.answer) for row in retained.split("train")] if retained else []
    protect = protect_examples(tokenizer, probe, base) if probe and config.training.general_replay else []
    trainer = Trainer(model, examples, config.training, config.method.learning_rate,
                      tokenizer.pad_token_id, device, bf16, replay=replay, general=protect)
    progress = {"epoch": 0, "train_tokens": 0, "train_seconds": 0.0, "eval_seconds": 0.0, "history": [],
                "parent": {}}
    val_records: list[dict] = []
    ledger: list[dict] = []
    if resume_from is not None:
        progress = _restore(Path(resume_from), model, trainer)
        val_records = read_jsonl(Path(resume_from) / "predictions_val.jsonl")
        # The epochs before the checkpoint (a checkpoint from before the ledger existed has none).
        earlier = Path(resume_from) / LEDGER
        ledger = [row for row in read_jsonl(earlier) if row["epoch"] <= progress["epoch"]] if earlier.exists() else []
        log(f"resumed from {resume_from} after epoch {progress['epoch']}")
    train_rows, val_rows = knowledge.split("train"), knowledge.split("val")
    # Old facts held out from training: how much of what the model knew it still knows.
    retention_rows = retained.split("val") if retained else []
    max_new_tokens = generation_budget(tokenizer, knowledge, config.eval, retained)
    val_examples = [qa_example(tokenizer, row.question, row.answer) for row in val_rows]

    def evaluate(*row_sets: list) -> list[tuple[dict[str, float], list[dict]]]:
        """Score several sets of questions with one pass of batched generation over all of them."""
        _, records = score_rows(model, tokenizer, [row for rows in row_sets for row in rows],
                                batch_size=config.eval.batch_size, max_new_tokens=max_new_tokens,
                                device=device, bf16=bf16)
        results, start = [], 0
        for rows in row_sets:
            part = records[start : start + len(rows)]
            results.append((metrics_of(part), part))
            start += len(rows)
        return results

    def summary(metrics: dict, status: str) -> dict:
        return {
            "status": status,
            **{key: value for key, value in metrics.items()
               if key.startswith(("val_", "train_", "retention_", "parent_retention_", "general_", "adapter_"))},
            "peak_memory_mb": metrics["peak_memory_mb"],
            "epochs": metrics["epoch"],
            **{key: progress[key] for key in ("train_tokens", "train_seconds", "eval_seconds", "history")},
            "trainable_parameters": trainable,
            "total_parameters": total,
            "method": config.method.name,
            "base_model": config.model,
            "data_fingerprint": knowledge.fingerprint,
        }

    per_epoch_train = train_rows[: config.eval.max_train_questions] if config.eval.max_train_questions else train_rows
    if retention_rows and config.init_adapter is not None and progress["epoch"] == 0:
        # The adapter it starts from, on the same old questions: the bar retention is measured against.
        (parent_scores, _), = evaluate(retention_rows)
        progress["parent"] = {f"parent_retention_{name}": value for name, value in parent_scores.items()}
        log(f"start: retention_exact_recall {parent_scores['exact_recall']:.3f} on {len(retention_rows)} old questions")
    metrics = progress["history"][-1] if progress["history"] else {}
    for epoch in range(progress["epoch"] + 1, config.training.epochs + 1):
        stats = trainer.train_epoch(epoch)
        progress["train_tokens"] += stats.tokens
        progress["train_seconds"] += stats.seconds
        eval_started = time.perf_counter()
        final_epoch = epoch == config.training.epochs
        (val_scores, val_records), (train_scores, _), (retention_scores, _) = evaluate(
            val_rows, train_rows if final_epoch else per_epoch_train, retention_rows)
        early = answer_loss(model, val_examples, tokenizer.pad_token_id, device, bf16, config.eval.batch_size)
        judged_by = objective_metric(config.eval.objective)
        last = final_epoch or val_scores[judged_by] >= config.training.stop_at_val_recall
        shrunk = {}
        probe_kept: dict[float, dict[str, list[bool]]] = {}  # the probe's verdicts at each factor tried
        if last and config.training.adapter_shrink:  # a smaller step from the base (trials/shrink.py)
            tried: dict[float, tuple[dict[str, float], list[dict]]] = {}

            def protect_kept(factor: float) -> int | None:
                if not general:
                    return None
                probe_kept[factor] = general.kept(model, tokenizer, device, bf16, splits=("protect",))
                return sum(probe_kept[factor]["protect"])

            def judge(factor: float) -> Verdict:
                tried[factor] = evaluate(val_rows)[0]
                return Verdict(tried[factor][0][judged_by], protect_kept(factor))

            factor = choose_shrink(model, config.training.adapter_shrink, config.training.adapter_shrink_tolerance,
                                   Verdict(val_scores[judged_by], protect_kept(1.0)), judge, log)
            shrunk = {"adapter_shrink": factor}
            if factor != 1.0:  # from here on, what is measured and saved is the shrunk update (val: as tried)
                val_scores, val_records = tried[factor]
                (train_scores, _), (retention_scores, _) = evaluate(
                    train_rows if final_epoch else per_epoch_train, retention_rows)
                early = answer_loss(model, val_examples, tokenizer.pad_token_id, device, bf16, config.eval.batch_size)
        if last and not final_epoch and len(per_epoch_train) < len(train_rows):
            (train_scores, _), = evaluate(train_rows)  # stopping early: the final train scores are on all of them
        # The probe where early stopping compares trials (a sweep's rungs) and at the end.
        general_scores = (general.measure(model, tokenizer, device, bf16, config.eval.batch_size,
                                          kept=probe_kept.get(shrunk.get("adapter_shrink")))
                          if general and (last or epoch in config.eval.general_epochs) else {})
        progress["eval_seconds"] += time.perf_counter() - eval_started
        ledger += ledger_rows(val_records, epoch, config.eval.objective, trial_id)
        metrics = {
            "epoch": epoch,
            "loss": stats.loss,
            **{f"val_{name}": value for name, value in val_scores.items()},
            "val_answer_loss": early.loss,
            "val_answer_likelihood": early.likelihood,
            **{f"train_{name}": value for name, value in train_scores.items()},
            **({f"retention_{name}": value for name, value in retention_scores.items()} if retention_rows else {}),
            **progress.get("parent", {}),
            **general_scores,
            **shrunk,
            "train_tokens_per_second": progress["train_tokens"] / progress["train_seconds"],
            "epoch_tokens_per_second": stats.tokens_per_second,
            "peak_memory_mb": peak_memory_mb(device),
            "train_seconds": progress["train_seconds"],
            "eval_seconds": progress["eval_seconds"],
            "val_questions": len(val_rows),
        }
        progress["epoch"] = epoch
        progress["history"].append(metrics)
        log(f"epoch {epoch:3d}  loss {stats.loss:.4f}  val_answer_loss {early.loss:.4f}  "
            f"val_exact_recall {val_scores['exact_recall']:.3f}  "
            f"train_exact_recall {train_scores['exact_recall']:.3f}  "
            + "".join(f"{key} {general_scores[key]:.3f}  " for key in ("general_retention", "general_drift")
                      if key in general_scores)
            + f"{stats.tokens_per_second:,.0f} tok/s")
        checkpoint = None
        if checkpoint_each_epoch:
            checkpoint = output_dir / "checkpoint"
            _save(checkpoint, model, tokenizer, config, val_records, summary(metrics, "running"), ledger)
            torch.save(_trainer_state(trainer, progress), checkpoint / TRAINER_STATE)
        stop_requested = bool(on_epoch(metrics, checkpoint)) if on_epoch else False
        if last or stop_requested:
            break

    result = summary(metrics, "finished")
    _save(output_dir, model, tokenizer, config, val_records, result, ledger)
    return result


TRAINER_STATE = "trainer_state.pt"


def _save(directory: Path, model, tokenizer, config: TrialConfig, val_records: list[dict], summary: dict,
          ledger: list[dict]) -> None:
    """The files a trial leaves: adapter/ (peft + tokenizer), predictions, the per-fact ledger, metrics,
    its config."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory / "adapter")
    tokenizer.save_pretrained(directory / "adapter")
    _write_jsonl(directory / "predictions_val.jsonl", val_records)
    _write_jsonl(directory / LEDGER, ledger)
    (directory / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (directory / "trial_config.json").write_text(config.model_dump_json(indent=2) + "\n")


def _trainer_state(trainer: Trainer, progress: dict) -> dict:
    return {
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "batch_rng": trainer.rng.getstate(),
        "torch_rng": torch.get_rng_state(),
        "progress": progress,
    }


class CheckpointUnreadable(RuntimeError):
    """A checkpoint to resume from that its files cannot give back (one message argument: picklable)."""


def _restore(checkpoint: Path, model, trainer: Trainer) -> dict:
    """Continue exactly where a checkpoint left off: adapter weights, optimiser, schedule, RNGs."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    # Tensors and plain containers only: a checkpoint on shared storage must not be able to run code
    # here (a full unpickle would). Read before the model changes, so a refused file changes nothing.
    adapter = checkpoint / "adapter" / "adapter_model.safetensors"
    try:
        state = torch.load(checkpoint / TRAINER_STATE, weights_only=True)
        weights = load_file(adapter)
    except pickle.UnpicklingError:
        raise  # weights_only refused what the file would run: a tampered file, not a cut-short one
    except Exception as error:  # torch and safetensors each raise their own kinds for a cut-short file
        raise CheckpointUnreadable(f"checkpoint {checkpoint} cannot be read, cut short or corrupted "
                                   f"({type(error).__name__}: {error}); the epochs before it stay logged") from error
    set_peft_model_state_dict(model, weights)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.rng.setstate(state["batch_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state["progress"]
