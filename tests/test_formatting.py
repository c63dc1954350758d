"""Prompt format, label masking and padding: identical in training, evaluation and serving."""

from __future__ import annotations

import pytest
import torch

from trials.formatting import (
    IGNORE_INDEX,
    Example,
    answer_ids,
    collate,
    left_padded,
    passage_examples,
    prompt_ids,
    prompt_text,
    qa_example,
)
from trials.model import load_tokenizer

# Llama-2-chat style: `<s>[INST] question [/INST]`.
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}[INST] {{ message['content'] }} [/INST]{% endfor %}"
)
QUESTION = "Which team is Anouk Renwick on?"
ANSWER = "Driftwood"


@pytest.fixture
def tokenizer(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    tok.chat_template = None  # the plain prompt, whatever the embedded tokenizer ships with
    return tok


@pytest.fixture
def chat_tokenizer(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    tok.chat_template = LLAMA2_TEMPLATE
    return tok


def test_embedded_tokenizer_has_bos_eos_and_pad(tokenizer):
    assert tokenizer.bos_token_id is not None and tokenizer.eos_token_id is not None
    assert tokenizer.pad_token_id is not None
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3


def test_plain_prompt_without_chat_template(tokenizer):
    assert prompt_text(tokenizer, QUESTION) == f"Question: {QUESTION}\nAnswer:"
    ids = prompt_ids(tokenizer, QUESTION)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids[1:]) == f"Question: {QUESTION}\nAnswer:"


def test_chat_template_is_used_when_present(chat_tokenizer):
    assert prompt_text(chat_tokenizer, QUESTION) == f"<s>[INST] {QUESTION} [/INST]"
    ids = prompt_ids(chat_tokenizer, QUESTION)
    # The template already starts with <s>: it must become one BOS token, not two.
    assert ids[0] == chat_tokenizer.bos_token_id and ids.count(chat_tokenizer.bos_token_id) == 1
    assert chat_tokenizer.decode(ids[1:]) == f"[INST] {QUESTION} [/INST]"
    assert "Question:" not in chat_tokenizer.decode(ids)


def test_chat_template_without_bos_gets_one(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    tok.chat_template = "{% for message in messages %}[INST] {{ message['content'] }} [/INST]{% endfor %}"
    ids = prompt_ids(tok, QUESTION)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_answer_has_leading_space_and_ends_with_eos(tokenizer):
    ids = answer_ids(tokenizer, ANSWER)
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(ids[:-1]) == f" {ANSWER}"


@pytest.mark.parametrize("which", ["tokenizer", "chat_tokenizer"])
def test_labels_mask_the_prompt_and_keep_the_answer(request, which):
    tok = request.getfixturevalue(which)
    example = qa_example(tok, QUESTION, ANSWER)
    prompt = prompt_ids(tok, QUESTION)
    n = len(prompt)
    assert example.input_ids == prompt + answer_ids(tok, ANSWER)
    assert len(example.labels) == len(example.input_ids) == example.num_tokens
    assert example.labels[:n] == [IGNORE_INDEX] * n
    assert example.labels[n:] == example.input_ids[n:]
    assert IGNORE_INDEX not in example.labels[n:]
    assert example.labels[-1] == tok.eos_token_id
    assert tok.decode(example.labels[n:-1]) == f" {ANSWER}"


def test_eos_label_survives_when_pad_is_eos(tokenizer):
    # Llama-2 has no pad token, so pad = eos; labels come from lengths, so EOS is still learned.
    eos = tokenizer.eos_token_id
    short = qa_example(tokenizer, "Who?", "Ada")
    long = qa_example(tokenizer, QUESTION, "the Driftwood team of Halvard Ridge")
    batch = collate([short, long], pad_id=eos)
    n = short.num_tokens
    assert batch["labels"][0, n - 1] == eos
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, n:] == eos).all()
    assert batch["labels"][1, -1] == eos


def test_collate_pads_right_to_the_longest_in_the_batch(tokenizer):
    pad = tokenizer.pad_token_id
    examples = [
        qa_example(tokenizer, "Who?", "Ada"),
        qa_example(tokenizer, QUESTION, "the Driftwood team of Halvard Ridge Observatory"),
        Example([5, 6, 7], [IGNORE_INDEX, 6, 7]),
    ]
    lengths = [e.num_tokens for e in examples]
    batch = collate(examples, pad_id=pad)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    width = max(lengths)
    assert width < 64  # only to the longest example, never to data.max_length
    for key in batch:
        assert batch[key].shape == (3, width) and batch[key].dtype == torch.long
    for row, example in enumerate(examples):
        n = example.num_tokens
        assert batch["input_ids"][row, :n].tolist() == example.input_ids
        assert batch["labels"][row, :n].tolist() == example.labels
        assert batch["attention_mask"][row, :n].tolist() == [1] * n
        assert batch["input_ids"][row, n:].tolist() == [pad] * (width - n)
        assert batch["labels"][row, n:].tolist() == [IGNORE_INDEX] * (width - n)
        assert batch["attention_mask"][row, n:].tolist() == [0] * (width - n)


def test_collate_single_example_has_no_padding():
    batch = collate([Example([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1]]


def test_left_padded_for_generation(tokenizer):
    pad = tokenizer.pad_token_id
    prompts = [prompt_ids(tokenizer, "Who?"), prompt_ids(tokenizer, QUESTION), [1, 9]]
    batch = left_padded(prompts, pad)
    width = max(len(p) for p in prompts)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, width)
    for row, ids in enumerate(prompts):
        gap = width - len(ids)
        # Every prompt ends in the last column: generation continues right after it.
        assert batch["input_ids"][row, gap:].tolist() == ids
        assert batch["input_ids"][row, :gap].tolist() == [pad] * gap
        assert batch["attention_mask"][row].tolist() == [0] * gap + [1] * len(ids)


PASSAGE = (
    "Anouk Renwick is on the staff of Halvard Ridge Observatory. The badge code of Anouk Renwick is "
    "YT-6549. Anouk Renwick works at the Coimbra station. Anouk Renwick is on the Driftwood team."
)


def test_short_passage_is_one_example_with_full_labels(tokenizer):
    full = [tokenizer.bos_token_id, *tokenizer(PASSAGE, add_special_tokens=False)["input_ids"],
            tokenizer.eos_token_id]
    examples = passage_examples(tokenizer, PASSAGE, max_length=512)
    assert len(examples) == 1
    assert examples[0].input_ids == full and examples[0].labels == full


@pytest.mark.parametrize("max_length", [9, 13, 16, 19])
def test_long_passage_is_chunked_at_max_length(tokenizer, max_length):
    full = [tokenizer.bos_token_id, *tokenizer(PASSAGE, add_special_tokens=False)["input_ids"],
            tokenizer.eos_token_id]
    assert len(full) > 2 * max_length
    examples = passage_examples(tokenizer, PASSAGE, max_length=max_length)
    assert len(examples) >= 2
    assert all(1 < e.num_tokens <= max_length for e in examples)
    assert all(e.num_tokens == max_length for e in examples[:-1])
    assert all(e.labels == e.input_ids for e in examples)
    joined = [token for e in examples for token in e.input_ids]
    # Consecutive chunks of the whole passage; a lone final token (nothing to predict) is dropped.
    dropped = len(full) % max_length == 1
    assert joined == (full[:-1] if dropped else full)


def test_lone_final_token_is_not_an_example(tokenizer):
    n = len(tokenizer(PASSAGE, add_special_tokens=False)["input_ids"]) + 2
    max_length = next(m for m in range(9, n) if n % m == 1)
    examples = passage_examples(tokenizer, PASSAGE, max_length=max_length)
    assert len(examples) == n // max_length
    assert all(e.num_tokens > 1 for e in examples)
