"""The training loss: the output layer only where a label is, equal to the full-logits loss."""

from __future__ import annotations

import random

import pytest
import torch

from bench.previous import full_logits_loss, length_key
from trials.config import TrialConfig
from trials.data import load_knowledge
from trials.formatting import collate
from trials.methods.lora import LoraMethod
from trials.model import attach_method, load_base_model, load_tokenizer
from trials.train import batch_loss, batches_for_epoch, group_key
from trials.trial import build_examples


@pytest.fixture(scope="module")
def model_and_batches(tokenizer_path, demo_documents, demo_qa):
    torch.manual_seed(0)
    config = TrialConfig.model_validate({"data": {"documents": demo_documents, "qa": demo_qa}})
    tokenizer = load_tokenizer(tokenizer_path)
    model = attach_method(load_base_model(tokenizer_path, torch.device("cpu"), False), LoraMethod(r=4), False)
    examples = build_examples(tokenizer, load_knowledge(config.data), config)
    return model, tokenizer, examples


def test_answer_only_logits_give_the_full_logits_loss(model_and_batches):
    model, tokenizer, examples = model_and_batches
    # Mixed batches on purpose (length-only grouping puts QA pairs and passages together).
    batches = batches_for_epoch(examples, 8, random.Random(0), key=length_key)[:6]
    for batch in batches:
        inputs = collate(batch, tokenizer.pad_token_id)
        labels = inputs.pop("labels")
        with torch.no_grad():
            ours, ours_targets = batch_loss(model, inputs, labels)
            full, full_targets = full_logits_loss(model, inputs, labels)
        assert ours_targets == full_targets > 0
        torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-4)


def test_shared_prompt_prefix_computed_once_gives_the_same_loss_and_gradients(model_and_batches):
    """Rows that start alike (as chat-template prompts do) share one forward pass of that start."""
    from trials.formatting import qa_example
    from trials.train import MIN_SHARED_PREFIX, shared_prefix_length

    model, tokenizer, _ = model_and_batches
    lead = "According to the staff records of the Halvard Ridge Observatory, "
    batch = [qa_example(tokenizer, lead + q, a) for q, a in
             (("which team is Piet on?", "Meridian"), ("where does Anouk work?", "Coimbra"),
              ("what badge code does Saskia carry?", "TT-9645"))]
    inputs = collate(batch, tokenizer.pad_token_id)
    labels = inputs.pop("labels")
    assert shared_prefix_length(inputs, labels) >= MIN_SHARED_PREFIX
    results, output_layer_calls = [], []
    counting = model.get_output_embeddings().register_forward_hook(lambda *_: output_layer_calls.append(1))
    for share in (True, False):
        model.zero_grad(set_to_none=True)
        loss, targets = batch_loss(model, inputs, labels, share_prefix=share)
        loss.backward()
        if share:  # the shared start runs without the output layer: none of its positions has a label
            assert len(output_layer_calls) == 1
        results.append((loss.detach(), targets,
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    counting.remove()
    (shared_loss, shared_targets, shared_grads), (plain_loss, plain_targets, plain_grads) = results
    assert shared_targets == plain_targets
    torch.testing.assert_close(shared_loss, plain_loss, rtol=1e-5, atol=1e-4)
    for name in plain_grads:
        # Float32 sums in another order: equal to a small fraction of the largest gradient entry.
        scale = float(plain_grads[name].abs().max())
        torch.testing.assert_close(shared_grads[name], plain_grads[name], rtol=1e-3, atol=1e-4 * scale,
                                   msg=lambda message, name=name: f"{name}: {message}")


def test_no_shared_prefix_across_passages_or_single_rows(model_and_batches):
    from trials.train import shared_prefix_length

    _, tokenizer, examples = model_and_batches
    passages = [e for e in examples if e.prompt_tokens == 0][:4]
    inputs = collate(passages, tokenizer.pad_token_id)
    labels = inputs.pop("labels")
    assert shared_prefix_length(inputs, labels) == 0  # a passage's logits count from its first token
    one = collate(examples[:1], tokenizer.pad_token_id)
    assert shared_prefix_length(one, one.pop("labels")) == 0


def test_gradients_match_too(model_and_batches):
    model, tokenizer, examples = model_and_batches
    inputs = collate(examples[:8], tokenizer.pad_token_id)
    labels = inputs.pop("labels")
    grads = []
    for loss_fn in (batch_loss, full_logits_loss):
        model.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model, inputs, labels)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        # Float32 sums in another order (the kernels differ by CPU: an Intel Xeon missed atol 1e-6): equal to
        # a small fraction of the largest gradient entry, as in the shared-prefix test above.
        scale = float(grads[1][name].abs().max())
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_grouping_keeps_qa_pairs_apart_from_passages(model_and_batches):
    _, _, examples = model_and_batches
    batches = batches_for_epoch(examples, 8, random.Random(0))
    assert sorted(id(e) for b in batches for e in b) == sorted(id(e) for e in examples)  # each once
    mixed = [b for b in batches if len({group_key(e)[0] for e in b}) > 1]
    # Only where a window's QA pairs run out into its passages can one batch hold both kinds.
    assert len(mixed) <= len(batches) // 8


def test_an_epoch_counts_a_shared_prefix_once_among_its_computed_tokens(tokenizer_path):
    """The tokens an epoch runs through the model: bench/mfu.py counts FLOPs on these, not on every row's copy of
    a shared prompt start, which ran once."""
    from trials.formatting import qa_example
    from trials.train import Trainer, shared_prefix_length

    tokenizer = load_tokenizer(tokenizer_path)
    lead = "According to the staff records of the Halvard Ridge Observatory, "
    examples = [qa_example(tokenizer, lead + q, a) for q, a in
                (("which team is Piet on?", "Meridian"), ("where does Anouk work?", "Coimbra"),
                 ("what badge code does Saskia carry?", "TT-9645"))]
    inputs = collate(examples, tokenizer.pad_token_id)
    shared = shared_prefix_length(inputs, inputs.pop("labels"))
    real = int(inputs["attention_mask"].sum())
    for share in (True, False):
        model = attach_method(load_base_model(tokenizer_path, torch.device("cpu"), False), LoraMethod(r=4), not share)
        training = TrialConfig.model_validate({"data": {"qa": "unused.jsonl"}, "training": {
            "batch_size": 3, "gradient_checkpointing": not share}}).training
        stats = Trainer(model, examples, training, 1e-3, tokenizer.pad_token_id, torch.device("cpu"),
                        False).train_epoch()
        assert stats.tokens == real
        assert stats.computed_tokens == (real - 2 * shared if share else real)
