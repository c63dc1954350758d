"""bf16 training: the adapter layers take their bf16 inputs uncast (trials.model.bf16_adapter_inputs), with the
same numbers as peft's cast to float32 and back, gradient checkpointing included."""

from __future__ import annotations

import contextlib

import pytest
import torch

from trials.config import TrainingConfig, TrialConfig
from trials.data import load_knowledge
from trials.methods.lora import LoraMethod
from trials.model import attach_method, load_base_model, load_tokenizer
from trials.train import Trainer
from trials.trial import build_examples


def bf16_trainer(tokenizer_path, demo_documents, demo_qa, checkpointing: bool, peft_casts: bool = False) -> Trainer:
    torch.manual_seed(0)
    config = TrialConfig.model_validate({"data": {"documents": demo_documents, "qa": demo_qa}})
    tokenizer = load_tokenizer(tokenizer_path)
    model = attach_method(load_base_model(tokenizer_path, torch.device("cpu"), True),
                          LoraMethod(r=4, target_modules=["q_proj", "v_proj", "down_proj"]), checkpointing)
    examples = build_examples(tokenizer, load_knowledge(config.data), config)[:24]
    settings = TrainingConfig(epochs=2, batch_size=8, warmup_ratio=0.0, bf16=True,
                              gradient_checkpointing=checkpointing)
    trainer = Trainer(model, examples, settings, 1e-2, tokenizer.pad_token_id, torch.device("cpu"), True)
    if peft_casts:  # as before bf16_adapter_inputs
        trainer.adapter_inputs = lambda model: contextlib.nullcontext()
    return trainer


def trained(trainer: Trainer) -> tuple[list[float], dict[str, torch.Tensor]]:
    losses = [trainer.train_epoch().loss for _ in range(2)]
    return losses, {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_bf16_adapter_inputs_are_uncast_and_train_the_same(tokenizer_path, demo_documents, demo_qa, checkpointing):
    trainer = bf16_trainer(tokenizer_path, demo_documents, demo_qa, checkpointing)
    seen: set[torch.dtype] = set()
    hooks = [module.register_forward_pre_hook(lambda _, args: seen.add(args[0].dtype))
             for name, module in trainer.model.named_modules() if name.endswith("lora_A.default")]
    ours = trained(trainer)
    for hook in hooks:
        hook.remove()
    assert seen == {torch.bfloat16}  # peft's cast would hand lora_A float32

    peft_cast = trained(bf16_trainer(tokenizer_path, demo_documents, demo_qa, checkpointing, peft_casts=True))
    assert ours[0] == peft_cast[0]
    for name, weight in peft_cast[1].items():
        assert torch.equal(ours[1][name], weight), name
