"""Base model, tokenizer and the peft method of one trial."""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trials.config import EMBEDDED_MODEL, SMOLLM2_MODEL, TrainingConfig, TrialConfig
from trials.methods import AnyMethod

# peft 0.21 still calls transformers 5's deprecated `is_gradient_checkpointing`; harmless, and it
# would print once per trial.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def resolve_model(name: str) -> str:
    """A path `from_pretrained` can load: embedded models are built or converted into the cache first."""
    if name == EMBEDDED_MODEL:
        from trials.tiny_model import embedded_model_path

        return str(embedded_model_path())
    if name == SMOLLM2_MODEL:
        from trials.smollm2 import embedded_model_path

        return str(embedded_model_path())
    return name


def pick_device(training: TrainingConfig) -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned to this trial, so "cuda" is the right one.
    if training.device == "cpu" or (training.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def use_bf16(training: TrainingConfig, device: torch.device) -> bool:
    """bf16 autocast: `auto` = on a GPU with bf16; `true` also on the CPU (native on AVX512-BF16/AMX)."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if training.bf16 is True and device.type == "cuda" and not cuda_bf16:
        raise ValueError("training.bf16: true, but this GPU has no bf16 support (set it to auto)")
    return cuda_bf16 if training.bf16 == "auto" else bool(training.bf16)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        # Llama-2 has no pad token. Reusing EOS is safe here because labels and attention masks
        # are built from lengths, never by comparing token ids with the pad id.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(path: str, device: torch.device, bf16: bool, attention: str = "sdpa"):
    """The frozen base, its weights in bf16 when the trial computes in bf16 (the adapter's stay float32: peft's
    autocast_adapter_dtype). On a GPU that halves a 7B model's memory; on the CPU, where autocast would cast every
    float32 weight on every call and norms and the residual stream would run in float32, SmolLM2 trained 1.18x
    faster at the same val recall (bench/RESULTS.md, "Training steps": bf16_base)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention).to(device)


@dataclass(frozen=True)
class Loaded:
    """What a config's trial runs on: its tokenizer and frozen base model, and where and how they run."""

    tokenizer: Any
    model: Any
    device: torch.device
    bf16: bool
    base_path: str  # the path the base model loaded from (an embedded model's cache directory)
    attention: str  # the attention kernel it runs (training.attention)
    use_cache: bool  # its own config.use_cache, which attach_method changes and keep_base puts back
    reused: bool = False  # the base kept by this process's previous trial, not loaded again (keep_base)

    @property
    def reuse_key(self) -> tuple:
        return reuse_key(self.base_path, self.device, self.bf16, self.attention)


def reuse_key(base_path: str, device: torch.device, bf16: bool, attention: str) -> tuple:
    """What a kept base must match to be reused (keep_base): path, device, precision and attention kernel."""
    return base_path, str(device), bf16, attention


def load_for(config: TrialConfig, base_path: str | None = None, tokenizer_path: str | None = None,
             reuse: bool = False) -> Loaded:
    """The base model `config.model` on the device, in the precision and with the attention kernel that
    `config.training` asks for, and its tokenizer.

    `base_path`: a copy of that base to load instead (a registered or exported one); `tokenizer_path`:
    a tokenizer saved beside an adapter, whose chat template may differ from the base's. `reuse`: the base
    kept by `keep_base` after this process's last trial, when it is the same one (a trial's own path).
    """
    device = pick_device(config.training)
    bf16 = use_bf16(config.training, device)
    base_path = base_path or resolve_model(config.model)
    tokenizer = load_tokenizer(tokenizer_path or base_path)
    attention = config.training.attention
    model = _kept.pop(reuse_key(base_path, device, bf16, attention), None) if reuse and reuse_enabled() else None
    _kept.clear()  # one base kept at most: a different one's weights are let go
    reused = model is not None
    if not reused:
        model = load_base_model(base_path, device, bf16, attention)
    # A kept base had its use_cache put back, so either way this is the model's own.
    return Loaded(tokenizer, model, device, bf16, base_path, attention, model.config.use_cache, reused)


# The base model a finished trial gives back, for the next trial in the same process: Ray Tune runs a sweep's
# trials in reused workers (reuse_actors), so a sweep loads its base once per worker, not once per trial.
# Keyed by Loaded.reuse_key; RECALL_REUSE_BASE=0 turns reuse off.
_kept: dict[tuple, Any] = {}


def reuse_enabled() -> bool:
    return os.environ.get("RECALL_REUSE_BASE", "1") != "0"


def keep_base(peft_model, loaded: Loaded) -> None:
    """Take the adapter out of a finished trial's model (peft's `unload`: its layers removed, nothing merged;
    a prompt-learning method never changed the base) and keep the bare base, exactly as loaded, for the next
    trial of this process."""
    if not reuse_enabled():
        return
    base = peft_model.get_base_model() if peft_model.active_peft_config.is_prompt_learning else peft_model.unload()
    if getattr(base, "is_gradient_checkpointing", False):
        base.gradient_checkpointing_disable()
    base.config.use_cache = loaded.use_cache
    base.requires_grad_(True)  # as from_pretrained gives it; attach_method freezes it again
    base.eval()
    _kept.clear()
    _kept[loaded.reuse_key] = base


@contextlib.contextmanager
def autocast(device: torch.device, bf16: bool, model=None):
    """The precision context for training and generation alike, so a trial scores as it trained. Given the
    peft `model`, its adapter layers also take their bf16 inputs as they are (bf16_adapter_inputs)."""
    with contextlib.ExitStack() as stack:
        if bf16:
            stack.enter_context(torch.autocast(device_type=device.type, dtype=torch.bfloat16))
            if model is not None:
                stack.enter_context(bf16_adapter_inputs(model))
        yield


def bf16_adapter_inputs(model):
    """peft casts each adapter layer's input to its float32 weights; under bf16 autocast the matmul casts it
    straight back. Without the round trip the numbers are the same (bf16 -> float32 -> bf16 is exact) and each
    LoRA layer makes two copies fewer a pass: SmolLM2 trained 1.09x faster (bench/RESULTS.md, "Training steps":
    peft_input_casts). Only under bf16 autocast: without it, float32 weights need float32 inputs."""
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model)


def attach_method(model, method: AnyMethod, gradient_checkpointing: bool, init_adapter: Path | None = None):
    """The trainable peft model: a fresh adapter of `method`, or the saved `init_adapter` to train further."""
    from peft import get_peft_model

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = not gradient_checkpointing
    if init_adapter is not None:
        return _trained_further(model, init_adapter)
    return get_peft_model(model, method.peft_config())


def _trained_further(model, adapter_dir: Path):
    """A saved adapter, trainable. peft loads a prompt-learning (prefix) adapter for inference only, so its saved
    prefix goes into a fresh trainable one of the same config. A projected prefix is saved as what its MLP computes,
    not the MLP: it trains on from there directly (prefix_projection off), the same prefix."""
    from peft import (PeftConfig, PeftModel, get_peft_model, load_peft_weights,
                      set_peft_model_state_dict)

    config = PeftConfig.from_pretrained(str(adapter_dir))
    if not config.is_prompt_learning:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    config.inference_mode = False
    if getattr(config, "prefix_projection", False):
        config.prefix_projection = False
    peft_model = get_peft_model(model, config)
    set_peft_model_state_dict(peft_model, load_peft_weights(str(adapter_dir)))
    return peft_model


def load_adapter(base_model, adapter_dir: str):
    """A trained adapter on its base model, ready to generate."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base_model, adapter_dir)
    model.eval()
    return model
