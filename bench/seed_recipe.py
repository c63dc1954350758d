"""The seed recipe (the blog post we start from), reproduced as written, on our embedded model.

    tokenizer.pad_token = tokenizer.eos_token
    tokenize = lambda b: tokenizer(b["text"], padding="max_length", truncation=True)  # no max_length
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    TrainingArguments(per_device_train_batch_size=2, learning_rate=1e-6, num_train_epochs=..., bf16=<if supported>)
    transformers.Trainer(...).train()

Reproduced behaviour, and the only departures (all stated in RESULTS.md):
- Llama-2's tokenizer has model_max_length unset (a huge number), so `padding="max_length"` with no
  `max_length` pads nothing at tokenisation; the collator then pads each batch to its longest
  example. Our tokenizer gets `model_max_length = VERY_LARGE_INTEGER` so the same call does the same.
- Llama-2's tokenizer adds `<s>` to every text; ours adds no special tokens, so BOS is prepended.
- One training example per text line: each non-empty line of the documents, and each train QA pair
  rendered as "Question: q\\nAnswer: a" (one record, the QA analogue of a line; the same prompt our
  scorer uses, so the seed model is scored in the format it trained on).
- No checkpoint saving, logging or progress bar inside the timed training (`save_strategy="no"`,
  `report_to="none"`, `disable_tqdm=True`): the blog saves every 500 steps; we do not charge it for that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from trials.data import Knowledge

VERY_LARGE_INTEGER = int(1e30)  # what transformers uses when a tokenizer has no model_max_length


@dataclass(frozen=True)
class SeedRecipe:
    """The recipe's hyperparameters: the one definition every bench side and report line uses."""

    r: int = 8
    alpha: int = 32
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0  # the blog leaves peft's default, 0 (the sweep's seed point says so too)
    learning_rate: float = 1e-6
    batch_size: int = 2

    @property
    def adapter(self) -> str:
        """How latest.json names this adapter: `r=8 alpha=32 q_proj,v_proj`."""
        return f"r={self.r} alpha={self.alpha} {','.join(self.target_modules)}"

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=list(self.target_modules),
                          lora_dropout=self.dropout, bias="none", task_type="CAUSAL_LM")

    def method(self):
        """This LoRA as our config type: for our loop with the seed's adapter, and our scorer."""
        from trials.methods.lora import LoraMethod

        return LoraMethod(r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=list(self.target_modules),
                          learning_rate=self.learning_rate)


SEED = SeedRecipe()


def seed_lines(knowledge: Knowledge, documents: list[Path]) -> list[str]:
    """One text per example: the documents' non-empty lines, then the train QA pairs."""
    lines: list[str] = []
    for path in documents:
        lines += [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    lines += [f"Question: {row.question}\nAnswer: {row.answer}" for row in knowledge.split("train")]
    return lines


def seed_tokenizer(path: str):
    """The recipe's tokenizer setup: pad = eos, no length limit (Llama-2's model_max_length is unset)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = VERY_LARGE_INTEGER
    return tokenizer


def seed_dataset(tokenizer, lines: list[str]):
    """`dataset.map(tokenize, batched=True)` as in the recipe, plus Llama-2's automatic BOS."""
    from datasets import Dataset

    bos = tokenizer.bos_token_id
    adds_bos = tokenizer("x")["input_ids"][:1] == [bos]

    def tokenize(batch):
        encoded = tokenizer(batch["text"], padding="max_length", truncation=True)
        if not adds_bos:  # Llama-2's tokenizer starts every text with <s>; ours does not
            encoded["input_ids"] = [[bos, *ids] for ids in encoded["input_ids"]]
            encoded["attention_mask"] = [[1, *mask] for mask in encoded["attention_mask"]]
        return encoded

    dataset = Dataset.from_dict({"text": lines})
    return dataset.map(tokenize, batched=True, remove_columns=["text"])


def seed_base(trial):
    """`trial` as the recipe loads its base model: the recipe sets no attention kernel, so transformers'
    default (sdpa) whatever the trial's; device and precision as the trial's."""
    return trial.model_copy(update={"training": trial.training.model_copy(update={"attention": "sdpa"})})


def seed_model(trial):
    """The recipe's LoRA on `trial`'s base model: trials.model.Loaded, its model the peft model."""
    from peft import get_peft_model

    from trials.model import load_for

    loaded = load_for(seed_base(trial))
    return replace(loaded, model=get_peft_model(loaded.model, SEED.lora_config()))


@dataclass
class SeedRun:
    tokens: int  # real (non-pad) tokens: sum of attention_mask over the batches trained on
    padded_tokens: int  # batch width x rows, what the model actually computed on
    seconds: float  # wall time of trainer.train()
    steps: int
    epochs: float
    examples: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def train_seed(model, tokenizer, dataset, output_dir: Path, *, epochs: float = 1.0, token_target: int | None = None,
               bf16: bool = False, seed: int = 42) -> SeedRun:
    """HF Trainer as in the recipe. With `token_target`, stop after the step that reaches it."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    counts = {"tokens": 0, "padded": 0}

    class CountingTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counts["tokens"] += int(inputs["attention_mask"].sum())
            counts["padded"] += int(inputs["attention_mask"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    class StopAtTokens(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if token_target is not None and counts["tokens"] >= token_target:
                control.should_training_stop = True

    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=SEED.batch_size,
        learning_rate=SEED.learning_rate,
        num_train_epochs=epochs,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),  # HF refuses bf16 on the CPU unless told it is the CPU
        seed=seed,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[StopAtTokens()],
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    state = trainer.state
    return SeedRun(counts["tokens"], counts["padded"], seconds, state.global_step, float(state.epoch or 0.0),
                   len(dataset))


@dataclass
class SeedTrained:
    run: SeedRun
    model: object  # the peft model, trained
    base_path: str
    bf16: bool
    config: object  # the trial config with the seed's method: what score_adapter needs


def train_seed_for(trial, epochs: int, work: Path) -> SeedTrained:
    """The seed recipe on `trial`'s base model and data (its documents' lines + train QA pairs)."""
    from trials.data import load_knowledge

    seed = seed_model(trial)
    tokenizer = seed_tokenizer(seed.base_path)
    dataset = seed_dataset(tokenizer, seed_lines(load_knowledge(trial.data), trial.data.documents))
    run = train_seed(seed.model, tokenizer, dataset, work / "seed-recall", epochs=epochs, bf16=seed.bf16)
    return SeedTrained(run, seed.model, seed.base_path, seed.bf16, trial.model_copy(update={"method": SEED.method()}))


def save_for_scoring(trained: SeedTrained, directory: Path, chat_template: bool = True) -> Path:
    """The seed adapter with the tokenizer our scorer generates with; without the chat template the
    scorer asks `Question: q\nAnswer:`, the lines the seed recipe trained on."""
    from trials.model import load_tokenizer

    trained.model.save_pretrained(directory)
    tokenizer = load_tokenizer(trained.base_path)
    if not chat_template:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(directory)
    return directory
