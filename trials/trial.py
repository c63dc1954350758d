"""One trial in phases: setup (model, probe, examples, trainer) -> restore (when resuming) -> epoch after
epoch (train, evaluate, checkpoint) -> save.

`run_trial` is the single code path behind `orchestrator trial` and every Ray Tune trial, and reads as
those phases in order; the caller gets each epoch's metrics through `on_epoch` (Tune reports them;
returning True stops). `TrialRun` holds what passes from one phase to the next.
"""

from __future__ import annotations

import json
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trials.augment import QuestionDropout
from trials.config import TrialConfig, objective_metric
from trials.data import DataError, Knowledge, load_knowledge
from trials.evaluate import generation_budget, retained_knowledge, score_rows
from trials.formatting import passage_examples, qa_example
from trials.general import GeneralCheck, base_answers, load_probe, protect_examples
from trials.ledger import LEDGER, ledger_rows, read_jsonl
from trials.model import attach_method, keep_base, load_for
from trials.recall import metrics_of
from trials.router import Router, attach, routed_and_measured
from trials.shrink import Verdict, choose_shrink
from trials.train import AnswerLoss, EpochStats, Trainer, answer_loss, trainable_parameters

EpochCallback = Callable[[dict, Path | None], bool | None]
TRAINER_STATE = "trainer_state.pt"
# Every trainable parameter as it trains. The adapter's own file is peft's inference form, which for prefix tuning
# with prefix_projection holds the projected prefix, not the embedding and MLP that train, so it cannot resume one.
TRAINABLE = "trainable.safetensors"


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_examples(tokenizer, knowledge: Knowledge, config: TrialConfig):
    """The train QA pairs, in the train split's order and first (trials/augment.py relies on both), then the
    passages."""
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
    run = TrialRun(config, output_dir, log, trial_id)  # raises DataError before any model is loaded
    output_dir.mkdir(parents=True, exist_ok=True)
    stopped = False
    try:
        run.setup()
        if resume_from is not None:
            run.restore(Path(resume_from))
        run.measure_parent()
        for epoch in run.epochs_left():
            metrics, last = run.epoch(epoch)
            checkpoint = run.checkpoint() if checkpoint_each_epoch else None
            try:
                stop = on_epoch(metrics, checkpoint) if on_epoch else False
            except SystemExit:
                # Ray Tune ends a trial it stops (early stopping, a reused worker's next trial) with sys.exit inside
                # its report: between two epochs, so the base is whole and the worker's next trial may have it.
                stopped = True
                run.release()
                raise
            if stop or last:
                break
        summary = run.save(output_dir, "finished")
        run.release()
        return summary
    except BaseException as error:
        if stopped:  # not a failure: the scores of the epochs it ran stand
            record = run.summary("stopped")
        else:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            record = {"status": status, "error": f"{type(error).__name__}: {error}", "method": config.method.name}
        (output_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        raise


def has_plateaued(objectives: list[float], patience: int | None) -> bool:
    """Whether the last `patience` of a trial's val objectives, epoch by epoch, are none better than the best before
    them (training.patience; None = never)."""
    return (patience is not None and len(objectives) > patience
            and max(objectives[-patience:]) <= max(objectives[:-patience]))


@dataclass
class EpochScores:
    """An epoch's evaluation: each question set's metrics_of, the answers' teacher-forced loss, the probe. At an
    epoch not scored (eval.recall_every) only the answers' loss: the rest is empty."""

    val: dict[str, float]
    val_records: list[dict]
    train: dict[str, float]
    retention: dict[str, float]
    answers: AnswerLoss
    general: dict[str, float]
    shrunk: dict[str, float]  # {"adapter_shrink": factor kept} where training.adapter_shrink ran
    last: bool  # the trial's last epoch: the final one, val reached training.stop_at_val_recall, or it plateaued
    plateaued: bool  # the val objective has not beaten its best for training.patience (scored) epochs


class TrialRun:
    """One trial's state from phase to phase. Constructing it reads the data and the probe (cheap, and
    wrong data fails before any model loads); `setup` loads the rest."""

    def __init__(self, config: TrialConfig, output_dir: Path, log: Callable[[str], None], trial_id: str | None):
        self.config, self.output_dir, self.log, self.trial_id = config, output_dir, log, trial_id
        self.knowledge = load_knowledge(config.data)
        self.retained = retained_knowledge(config)
        self.probe = load_probe(config.eval.general) if config.eval.general else None
        if config.training.adapter_router and not self._general_for_the_router():
            raise DataError([f"{config.eval.general}: no 'protect' questions or prompts for the adapter router to "
                             f"learn general questions from (training.adapter_router, eval.general)"])
        self.judged_by = objective_metric(config.eval.objective)
        self.progress = {"epoch": 0, "train_tokens": 0, "train_seconds": 0.0, "eval_seconds": 0.0, "history": [],
                         "parent": {}}
        self.metrics: dict = {}  # the latest epoch's
        self.val_records: list[dict] = []
        self.ledger: list[dict] = []

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Base model, the probe's base answers, the method's adapter, the question sets and the trainer."""
        config = self.config
        set_seed(config.training.seed)
        self.loaded = loaded = load_for(config, reuse=True)
        self.tokenizer, self.device, self.bf16 = loaded.tokenizer, loaded.device, loaded.bf16
        # The base model's replies to the general probe: from the cache, or generated now, before an adapter exists.
        base = (base_answers(loaded.model, self.tokenizer, self.probe, loaded.base_path, self.device, self.bf16,
                             config.eval.batch_size) if self.probe else None)
        check = GeneralCheck(self.tokenizer, self.probe, base) if self.probe else None
        # Asked only where the general floor can apply (eval.general_min_known): the retention and drift of a base that
        # knows too little are noise, and asking cost a 2-epoch tiny-model trial about 3 s of its ~10 (1.7 s a time).
        self.general = check if check and check.base_known >= config.eval.general_min_known else None
        # Fitted on the bare base before the adapter exists (trials/router.py); it routes every answer after.
        self.router = self._router(loaded) if config.training.adapter_router else None
        self.model = attach(attach_method(loaded.model, config.method, config.training.gradient_checkpointing,
                                          config.init_adapter), self.router)
        self.trainable, self.total = count_parameters(self.model)
        self.log(f"{config.method.name}: {self.trainable:,} trainable of {self.total:,} parameters on {self.device}"
                 f"{' (bf16)' if self.bf16 else ''}{f', from {config.init_adapter}' if config.init_adapter else ''}")
        self.trainer = self._trainer(base)
        self._question_sets()

    def _general_for_the_router(self, split: str = "protect") -> list[str]:
        return ([q.question for q in self.probe.questions if q.split == split]
                + [p.prompt for p in self.probe.prompts if p.split == split])

    def _router(self, loaded) -> Router:
        """The router, learnt from the train questions (and data.retain's) against the probe's protect part, and
        where it sends those it did not learn from: val (and old facts' val) to the adapter, the probe's check
        questions and prompts to the base (router_* metrics)."""
        def questions(split: str) -> list[str]:
            rows = self.knowledge.split(split) + (self.retained.split(split) if self.retained else [])
            return [row.question for row in rows]

        router, measured = routed_and_measured(
            loaded.model, self.tokenizer, private=questions("train"), general=self._general_for_the_router(),
            unseen_private=questions("val"), unseen_general=self._general_for_the_router("check"),
            base_path=loaded.base_path, batch_size=self.config.eval.batch_size, device=self.device, bf16=self.bf16)
        self.progress["router"] = measured
        self.log(f"adapter router: {measured['router_val_to_adapter']:.3f} of the val questions to the adapter, "
                 f"{measured['router_check_to_base']:.3f} of the general check questions and prompts to the base")
        return router

    def _trainer(self, base) -> Trainer:
        config, tokenizer = self.config, self.tokenizer
        examples = build_examples(tokenizer, self.knowledge, config)
        replay = ([qa_example(tokenizer, row.question, row.answer) for row in self.retained.split("train")]
                  if self.retained else [])
        protect = protect_examples(tokenizer, self.probe, base) if self.probe and config.training.general_replay else []
        dropout = config.training.question_word_dropout
        vary = QuestionDropout(tokenizer, self.knowledge.split("train"), dropout) if dropout else None
        return Trainer(self.model, examples, config.training, config.method.learning_rate, tokenizer.pad_token_id,
                       self.device, self.bf16, replay=replay, general=protect, vary=vary)

    def _question_sets(self) -> None:
        self.train_rows, self.val_rows = self.knowledge.split("train"), self.knowledge.split("val")
        limit = self.config.eval.max_train_questions
        self.per_epoch_train = self.train_rows[:limit] if limit else self.train_rows
        # Old facts held out from training: how much of what the model knew it still knows.
        self.retention_rows = self.retained.split("val") if self.retained else []
        self.max_new_tokens = generation_budget(self.tokenizer, self.knowledge, self.config.eval, self.retained)
        self.val_examples = [qa_example(self.tokenizer, row.question, row.answer) for row in self.val_rows]

    # ---------------------------------------------------------------------------------------- restore

    def restore(self, checkpoint: Path) -> None:
        """Continue exactly where a checkpoint left off: adapter weights, optimiser, schedule, RNGs, and the
        predictions and ledger rows of the epochs before it."""
        state, weights = read_checkpoint(checkpoint)
        trainable = dict(trainable_parameters(self.model))
        shapes = {name: tuple(tensor.shape) for name, tensor in weights.items()}
        if shapes != {name: tuple(parameter.shape) for name, parameter in trainable.items()}:
            raise CheckpointUnreadable(f"checkpoint {checkpoint} holds another adapter's weights than this trial's "
                                       f"{self.config.method.name} adapter trains")
        with torch.no_grad():
            for name, parameter in trainable.items():
                parameter.copy_(weights[name])
        self.trainer.load_state_dict(state)
        self.progress = state["progress"]
        self.metrics = self.progress["history"][-1] if self.progress["history"] else {}
        self.val_records = read_jsonl(checkpoint / "predictions_val.jsonl")
        # The epochs before the checkpoint (a checkpoint from before the ledger existed has none).
        earlier = checkpoint / LEDGER
        self.ledger = ([row for row in read_jsonl(earlier) if row["epoch"] <= self.progress["epoch"]]
                       if earlier.exists() else [])
        self.log(f"resumed from {checkpoint} after epoch {self.progress['epoch']}")

    def measure_parent(self) -> None:
        """Warm-started with old facts: the adapter it starts from, on the same old questions, is the bar
        retention is measured against (measured once, before epoch 1; a resumed trial has it already)."""
        if not (self.retention_rows and self.config.init_adapter is not None and self.progress["epoch"] == 0):
            return
        (parent_scores, _), = self.score(self.retention_rows)
        self.progress["parent"] = {f"parent_retention_{name}": value for name, value in parent_scores.items()}
        self.log(f"start: retention_exact_recall {parent_scores['exact_recall']:.3f} "
                 f"on {len(self.retention_rows)} old questions")

    # ------------------------------------------------------------------------------------------ epoch

    def epochs_left(self) -> range:
        return range(self.progress["epoch"] + 1, self.config.training.epochs + 1)

    def epoch(self, epoch: int) -> tuple[dict, bool]:
        """Train one epoch and evaluate it: (its metrics, whether it is the trial's last)."""
        stats = self.trainer.train_epoch(epoch)
        self.progress["train_tokens"] += stats.tokens
        self.progress["train_seconds"] += stats.seconds
        eval_started = time.perf_counter()
        scores = self.evaluate(epoch)
        self.progress["eval_seconds"] += time.perf_counter() - eval_started
        if scores.val:  # a scored epoch (eval.recall_every)
            self.val_records = scores.val_records
            self.ledger += ledger_rows(scores.val_records, epoch, self.config.eval.objective, self.trial_id)
        self.metrics = self._epoch_metrics(epoch, stats, scores)
        self.progress["epoch"] = epoch
        self.progress["history"].append(self.metrics)
        self.log(f"epoch {epoch:3d}  loss {stats.loss:.4f}  val_answer_loss {scores.answers.loss:.4f}  "
                 + (f"val_exact_recall {scores.val['exact_recall']:.3f}  "
                    f"train_exact_recall {scores.train['exact_recall']:.3f}  " if scores.val else "")
                 + "".join(f"{key} {scores.general[key]:.3f}  " for key in ("general_retention", "general_drift")
                           if key in scores.general)
                 + f"{stats.tokens_per_second:,.0f} tok/s")
        return self.metrics, scores.last

    def _epoch_metrics(self, epoch: int, stats: EpochStats, scores: EpochScores) -> dict:
        progress = self.progress
        return {
            "epoch": epoch,
            "loss": stats.loss,
            **{f"val_{name}": value for name, value in scores.val.items()},
            "val_answer_loss": scores.answers.loss,
            "val_answer_likelihood": scores.answers.likelihood,
            **{f"train_{name}": value for name, value in scores.train.items()},
            **({f"retention_{name}": value for name, value in scores.retention.items()} if self.retention_rows else {}),
            **progress.get("parent", {}),
            **progress.get("router", {}),
            "base_reused": float(self.loaded.reused),  # which trials of a sweep found their base model loaded
            **scores.general,
            **scores.shrunk,
            **({"plateaued": 1.0} if scores.plateaued else {}),  # ended itself (training.patience), not stopped
            "train_tokens_per_second": progress["train_tokens"] / progress["train_seconds"],
            "epoch_tokens_per_second": stats.tokens_per_second,
            "peak_memory_mb": peak_memory_mb(self.device),
            "train_seconds": progress["train_seconds"],
            "eval_seconds": progress["eval_seconds"],
            "val_questions": len(self.val_rows),
        }

    # --------------------------------------------------------------------------------------- evaluate

    def score(self, *row_sets: list) -> list[tuple[dict[str, float], list[dict]]]:
        """Score several sets of questions with one pass of batched generation over all of them."""
        _, records = score_rows(self.model, self.tokenizer, [row for rows in row_sets for row in rows],
                                batch_size=self.config.eval.batch_size, max_new_tokens=self.max_new_tokens,
                                device=self.device, bf16=self.bf16)
        results, start = [], 0
        for rows in row_sets:
            part = records[start : start + len(rows)]
            results.append((metrics_of(part), part))
            start += len(rows)
        return results

    def _answer_loss(self) -> AnswerLoss:
        return answer_loss(self.model, self.val_examples, self.tokenizer.pad_token_id, self.device, self.bf16,
                           self.config.eval.batch_size)

    def evaluate(self, epoch: int) -> EpochScores:
        """The answers' loss; at a scored epoch (eval.recall_every, the rungs, the last) also val, train (the
        per-epoch sample; all of it on the last epoch) and old facts; on the last epoch the shrunk update
        (training.adapter_shrink) and the probe, which the rungs score too."""
        config = self.config
        final = epoch == config.training.epochs
        every = config.eval.recall_every
        if not (final or epoch in config.eval.general_epochs or (every and epoch % every == 0)):
            return EpochScores({}, [], {}, {}, self._answer_loss(), {}, {}, last=False, plateaued=False)
        train_rows = self.train_rows if final else self.per_epoch_train
        (val, val_records), (train, _), (retention, _) = self.score(self.val_rows, train_rows, self.retention_rows)
        answers = self._answer_loss()
        judged = f"val_{self.judged_by}"
        plateaued = has_plateaued([metrics[judged] for metrics in self.progress["history"] if judged in metrics]
                                  + [val[self.judged_by]], config.training.patience)
        last = final or plateaued or val[self.judged_by] >= config.training.stop_at_val_recall
        shrunk, probe_kept = {}, {}
        if last and config.training.adapter_shrink:  # a smaller step from the base (trials/shrink.py)
            factor, tried, probe_kept = self._shrink(val)
            shrunk = {"adapter_shrink": factor}
            if factor != 1.0:  # from here on, what is measured and saved is the shrunk update (val: as tried)
                val, val_records = tried[factor]
                (train, _), (retention, _) = self.score(train_rows, self.retention_rows)
                answers = self._answer_loss()
        if last and not final and len(self.per_epoch_train) < len(self.train_rows):
            (train, _), = self.score(self.train_rows)  # stopping early: the final train scores are on all of them
        # The probe where early stopping compares trials (a sweep's rungs) and at the end.
        general = (self.general.measure(self.model, self.tokenizer, self.device, self.bf16, config.eval.batch_size,
                                        kept=probe_kept.get(shrunk.get("adapter_shrink")))
                   if self.general and (last or epoch in config.eval.general_epochs) else {})
        return EpochScores(val, val_records, train, retention, answers, general, shrunk, last, plateaued)

    def _shrink(self, val: dict[str, float]):
        """(the factor kept, each factor's val (metrics, records), the probe's verdicts at each factor)."""
        tried: dict[float, tuple[dict[str, float], list[dict]]] = {}
        probe_kept: dict[float, dict[str, list[bool]]] = {}

        def protect_kept(factor: float) -> int | None:
            if not self.general:
                return None
            probe_kept[factor] = self.general.kept(self.model, self.tokenizer, self.device, self.bf16,
                                                   splits=("protect",))
            return sum(probe_kept[factor]["protect"])

        def judge(factor: float) -> Verdict:
            tried[factor] = self.score(self.val_rows)[0]
            return Verdict(tried[factor][0][self.judged_by], protect_kept(factor))

        training = self.config.training
        factor = choose_shrink(self.model, training.adapter_shrink, training.adapter_shrink_tolerance,
                               Verdict(val[self.judged_by], protect_kept(1.0)), judge, self.log)
        return factor, tried, probe_kept

    # ------------------------------------------------------------------------------------------- save

    def summary(self, status: str) -> dict:
        progress = self.progress
        # A trial stopped from outside (on_epoch) may end on an epoch it did not score: its scores are its last ones.
        scored = [epoch for epoch in progress["history"] if f"val_{self.judged_by}" in epoch]
        metrics = {**(scored[-1] if scored else {}), **self.metrics}
        return {
            "status": status,
            **{key: value for key, value in metrics.items()
               if key.startswith(("val_", "train_", "retention_", "parent_retention_", "general_", "adapter_", "router_"))},
            "peak_memory_mb": metrics["peak_memory_mb"],
            "epochs": metrics["epoch"],
            **{key: progress[key] for key in ("train_tokens", "train_seconds", "eval_seconds", "history")},
            "trainable_parameters": self.trainable,
            "total_parameters": self.total,
            "method": self.config.method.name,
            "base_model": self.config.model,
            "data_fingerprint": self.knowledge.fingerprint,
        }

    def save(self, directory: Path, status: str) -> dict:
        """The files a trial leaves: adapter/ (peft + tokenizer), predictions, the per-fact ledger, metrics
        (the summary returned), its config."""
        summary = self.summary(status)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory / "adapter")
        self.tokenizer.save_pretrained(directory / "adapter")
        if self.router:
            self.router.save(directory / "adapter")
        _write_jsonl(directory / "predictions_val.jsonl", self.val_records)
        _write_jsonl(directory / LEDGER, self.ledger)
        (directory / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        (directory / "trial_config.json").write_text(self.config.model_dump_json(indent=2) + "\n")
        return summary

    def release(self) -> None:
        """The base model, adapter taken out, kept for this process's next trial (trials/model.keep_base). Only
        after a trial that finished: a failed one may have left the model in any state, and the next loads anew."""
        keep_base(self.model, self.loaded)

    def checkpoint(self) -> Path:
        """`save` while running, plus what `restore` needs to continue: trainer state and progress."""
        directory = self.output_dir / "checkpoint"
        self.save(directory, "running")
        torch.save({**self.trainer.state_dict(), "progress": self.progress}, directory / TRAINER_STATE)
        save_file({name: parameter.detach().contiguous() for name, parameter in trainable_parameters(self.model)},
                  directory / TRAINABLE)
        return directory


class CheckpointUnreadable(RuntimeError):
    """A checkpoint to resume from that its files cannot give back (one message argument: picklable)."""


def read_checkpoint(checkpoint: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(trainer state, trainable weights) of a checkpoint, read before anything changes, so a refused file
    changes nothing.

    Tensors and plain containers only: a checkpoint on shared storage must not be able to run code here
    (a full unpickle would).
    """
    try:
        return torch.load(checkpoint / TRAINER_STATE, weights_only=True), load_file(checkpoint / TRAINABLE)
    except pickle.UnpicklingError:
        raise  # weights_only refused what the file would run: a tampered file, not a cut-short one
    except Exception as error:  # torch and safetensors each raise their own kinds for a cut-short file
        raise CheckpointUnreadable(f"checkpoint {checkpoint} cannot be read, cut short or corrupted "
                                   f"({type(error).__name__}: {error}); the epochs before it stay logged") from error
