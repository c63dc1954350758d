"""Base model, tokenizer and the peft method of one trial."""

from __future__ import annotations

import warnings

import torch

from trials.config import EMBEDDED_MODEL, LoraMethod, PrefixMethod, TrainingConfig

# peft 0.21 still calls transformers 5's deprecated `is_gradient_checkpointing`; harmless, and it
# would print once per trial.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def resolve_model(name: str) -> str:
    if name == EMBEDDED_MODEL:
        from trials.tiny_model import embedded_model_path

        return str(embedded_model_path())
    return name


def pick_device(training: TrainingConfig) -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned to this trial, so "cuda" is the right one.
    if training.device == "cpu" or (training.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def use_bf16(training: TrainingConfig, device: torch.device) -> bool:
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if training.bf16 is True and not supported:
        raise ValueError("training.bf16: true, but this device has no bf16 support (set it to auto)")
    return supported if training.bf16 == "auto" else bool(training.bf16)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        # Llama-2 has no pad token. Reusing EOS is safe here because labels and attention masks
        # are built from lengths, never by comparing token ids with the pad id.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(path: str, device: torch.device, bf16: bool):
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)


def peft_config(method: LoraMethod | PrefixMethod):
    from peft import LoraConfig, PrefixTuningConfig, TaskType

    if isinstance(method, LoraMethod):
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=list(method.target_modules),
        )
    return PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=method.num_virtual_tokens,
        prefix_projection=method.prefix_projection,
    )


def attach_method(model, method: LoraMethod | PrefixMethod, gradient_checkpointing: bool):
    from peft import get_peft_model

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = not gradient_checkpointing
    return get_peft_model(model, peft_config(method))


def load_adapter(adapter_dir: str, base_path: str, device: torch.device, bf16: bool = False):
    """A trained adapter on its base model, ready to generate."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base_model(base_path, device, bf16), adapter_dir)
    model.eval()
    return model
