"""training.neftune_alpha: noisy input embeddings while a trial trains (NEFTune), and only then.

The hook is transformers' own; what is ours is where it lives: inside one training epoch, so evaluation
between epochs and a base model kept for the next trial (trials/model.keep_base) see clean embeddings.
"""

from __future__ import annotations

import pytest
import torch

from trials.train import Trainer


@pytest.fixture
def trainer_for(demo_trainer):
    """`trainer_for(neftune_alpha)` -> a Trainer over 16 train QA pairs of the demo, one step an epoch."""
    return lambda neftune_alpha: demo_trainer(16, 1e-3, neftune_alpha=neftune_alpha)


def embeddings_of(trainer: Trainer) -> torch.nn.Embedding:
    return trainer.model.get_input_embeddings()


def test_noise_changes_the_training_loss_and_nothing_is_left_on_the_embeddings(trainer_for):
    clean, noisy = trainer_for(0.0), trainer_for(15.0)
    clean_loss, noisy_loss = clean.train_epoch(1).loss, noisy.train_epoch(1).loss
    assert noisy_loss != pytest.approx(clean_loss, rel=1e-6), "the noise did not reach the forward pass"
    assert noisy_loss == pytest.approx(clean_loss, rel=0.2), "the noise is not of NEFTune's small size"
    embeddings = embeddings_of(noisy)
    assert not embeddings._forward_hooks and not hasattr(embeddings, "neftune_noise_alpha")


def test_no_noise_outside_an_epoch_even_in_train_mode(trainer_for):
    trainer = trainer_for(15.0)
    trainer.train_epoch(1)
    trainer.model.train()
    ids = torch.tensor([[1, 2, 3, 4]])
    first, second = embeddings_of(trainer)(ids), embeddings_of(trainer)(ids)
    assert torch.equal(first, second)


def test_a_failing_epoch_takes_its_hook_away_too(trainer_for):
    trainer = trainer_for(15.0)

    def fail(epoch):
        assert embeddings_of(trainer)._forward_hooks, "the hook is not on during the epoch"
        raise RuntimeError("stopped inside the epoch")

    trainer._train_epoch = fail
    with pytest.raises(RuntimeError, match="stopped inside"):
        trainer.train_epoch(1)
    assert not embeddings_of(trainer)._forward_hooks


def test_the_base_reference_of_kl_to_base_sees_clean_embeddings(trainer_for):
    # distilled_loss runs the model twice on a replay row: adapted (trained, so noisy) and with its adapter
    # disabled (the base's reference distribution for kl_to_base, taken on the row as it is).
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    from trials.formatting import collate
    from trials.train import distilled_loss

    trainer = trainer_for(15.0)
    trainer.model.train()
    batch = trainer.examples[:4]
    inputs = collate(batch, trainer.pad_id)
    labels = inputs.pop("labels")
    embeddings = embeddings_of(trainer)
    seen = []  # per embedding call: was its output the plain lookup?
    noise = activate_neftune(trainer.model, 15.0)
    spy = embeddings.register_forward_hook(  # after NEFTune's hook: sees what the layers get
        lambda module, args, output: seen.append(torch.equal(output, module.weight[args[0]])))
    try:
        distilled_loss(trainer.model, inputs, labels, torch.ones(len(batch), dtype=torch.bool), kl_weight=1.0)
    finally:
        spy.remove()
        deactivate_neftune(trainer.model, noise)
    assert seen == [False, True]
