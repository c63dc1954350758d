"""Prompt formatting and tokenisation: identical at train time, eval time and in the registry.

A question becomes the tokenizer's chat template when it has one (Llama-2-chat:
`<s>[INST] question [/INST]`, ChatML: `...<|im_start|>assistant\\n`), else `Question: ...\\nAnswer:`.
The answer follows (after a space, unless the prompt already ends in white space, as ChatML's
does) and ends with EOS, so the model learns to stop. Labels are built from lengths, never from
token ids: the seed recipe's pad = eos with the mlm=False collator masks every EOS out of the
labels, so its model never learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def prompt_text(tokenizer, question: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return f"Question: {question}\nAnswer:"


def prompt_ids(tokenizer, question: str) -> list[int]:
    text = prompt_text(tokenizer, question)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    # Chat templates already start with the BOS text; the plain prompt needs it added.
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def answer_ids(tokenizer, answer: str) -> list[int]:
    # A pretrained chat model continues "assistant\n" with the answer's first word, not a space:
    # training it on an extra space would fight what it already knows.
    separator = "" if prompt_text(tokenizer, "?")[-1:].isspace() else " "
    return tokenizer(separator + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int = 0  # leading tokens without a label (a QA prompt); 0 for a passage
    distill: bool = False  # a general-knowledge replay row: the base model's own reply (trials/general.py)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


def qa_example(tokenizer, question: str, answer: str) -> Example:
    """Loss on the answer (and its EOS) only."""
    prompt = prompt_ids(tokenizer, question)
    target = answer_ids(tokenizer, answer)
    return Example(prompt + target, [IGNORE_INDEX] * len(prompt) + target, prompt_tokens=len(prompt))


def passage_examples(tokenizer, passage: str, max_length: int) -> list[Example]:
    """Plain causal-LM loss on every token; long passages become consecutive chunks."""
    ids = tokenizer(passage, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    if ids[0] is None:
        ids = ids[1:]
    chunks = [ids[start : start + max_length] for start in range(0, len(ids), max_length)]
    return [Example(chunk, list(chunk)) for chunk in chunks if len(chunk) > 1]


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in this batch (dynamic padding, never to max length)."""
    width = max(example.num_tokens for example in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = example.num_tokens
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def left_padded(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left padding for batched generation: every prompt ends where generation starts."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
