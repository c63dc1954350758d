"""The PEFT methods a trial can train: one class per method, which validates its knobs, builds its peft
config and describes itself in one line.

Adding a method takes this class (a `name` literal, a `learning_rate`, `peft_config()`, `knobs_of()` = the
inverse of peft_config for a saved adapter, `shape()`), its entries in METHOD_CLASSES and PEFT_TYPES, and
its search-space class in orchestrator/search_space.py. Nothing else
branches on the method: an unknown name is a config error, never a fall-through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _modules(names: list[str]) -> str:
    return ",".join(name.removesuffix("_proj") for name in names)


class LoraMethod(Strict):
    name: Literal["lora"] = "lora"
    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], min_length=1, description="Module names that get adapters."
    )
    use_dora: bool = Field(False, description="DoRA: learn each weight's magnitude apart from its LoRA direction.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")

    def peft_config(self):
        from peft import LoraConfig, TaskType

        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), use_dora=self.use_dora)

    @staticmethod
    def knobs_of(saved: dict) -> dict:
        return {"r": saved["r"], "alpha": saved["lora_alpha"], "dropout": saved["lora_dropout"],
                "target_modules": sorted(saved["target_modules"]), "use_dora": saved.get("use_dora", False)}

    def shape(self) -> str:
        dropout = f" dropout={self.dropout:.2g}" if self.dropout else ""
        return f"r={self.r} alpha={self.alpha:g} {_modules(self.target_modules)}{' dora' if self.use_dora else ''}{dropout}"


class PrefixMethod(Strict):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, gt=0, description="Trainable key/value prefix length per layer.")
    prefix_projection: bool = Field(False, description="Reparameterise the prefix through an MLP (P-tuning v2 style).")
    learning_rate: float = Field(1e-2, gt=0, description="Peak learning rate.")

    def peft_config(self):
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=self.num_virtual_tokens,
                                  prefix_projection=self.prefix_projection)

    @staticmethod
    def knobs_of(saved: dict) -> dict:
        return {"num_virtual_tokens": saved["num_virtual_tokens"], "prefix_projection": saved["prefix_projection"]}

    def shape(self) -> str:
        return f"tokens={self.num_virtual_tokens}{' projection' if self.prefix_projection else ''}"


class IA3Method(Strict):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] = Field(
        default_factory=lambda: ["k_proj", "v_proj", "down_proj"], min_length=1,
        description="Modules whose activations get a learned scale (peft's default for Llama).")
    feedforward_modules: list[str] = Field(
        default_factory=lambda: ["down_proj"],
        description="The target modules that are feed-forward layers: their input is scaled, not their output.")
    learning_rate: float = Field(1e-2, gt=0, description="Peak learning rate (IA3 has few parameters: high rates).")

    @model_validator(mode="after")
    def _feedforward_are_targets(self):
        unknown = sorted(set(self.feedforward_modules) - set(self.target_modules))
        if unknown:  # peft would refuse it only when the model is built
            raise ValueError(f"feedforward_modules {unknown} must also be in target_modules")
        return self

    def peft_config(self):
        from peft import IA3Config, TaskType

        return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=list(self.target_modules),
                         feedforward_modules=list(self.feedforward_modules))

    @staticmethod
    def knobs_of(saved: dict) -> dict:
        return {"target_modules": sorted(saved["target_modules"]),
                "feedforward_modules": sorted(saved["feedforward_modules"] or [])}

    def shape(self) -> str:
        return _modules(self.target_modules)


METHOD_CLASSES: tuple[type[Strict], ...] = (LoraMethod, PrefixMethod, IA3Method)
PEFT_TYPES = {"LORA": LoraMethod, "PREFIX_TUNING": PrefixMethod, "IA3": IA3Method}  # adapter_config.json's peft_type
METHOD_NAMES: tuple[str, ...] = tuple(cls.model_fields["name"].default for cls in METHOD_CLASSES)
AnyMethod = Union[LoraMethod, PrefixMethod, IA3Method]
MethodName = Literal[METHOD_NAMES]  # a tuple subscript is the same as listing the names


def label(method: AnyMethod) -> str:
    """The method as users name it: DoRA is LoRA with use_dora, but nobody calls a DoRA run "lora"."""
    return "dora" if getattr(method, "use_dora", False) else method.name


def _method_name(value: Any) -> str | None:
    # `name` defaults to lora, as in LoraMethod: `method: {r: 16}` (or `--set method.r=16` on a config
    # without a method section) is a LoRA method, not "Unable to extract tag using discriminator".
    if isinstance(value, dict):
        return value.get("name", "lora")
    return getattr(value, "name", None)


Method = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for cls, name in zip(METHOD_CLASSES, METHOD_NAMES))],
    Discriminator(_method_name, custom_error_type="method_name",
                  custom_error_message="method.name must be one of " + ", ".join(METHOD_NAMES)),
]


def _adapter_config(adapter_dir: Path) -> dict:
    import json

    try:
        return json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"init_adapter {adapter_dir}: no peft adapter there ({error.strerror})") from None


def check_base(adapter_dir: Path, model: str) -> None:
    """Raise ValueError when the adapter was trained on another base model than `model`. Embedded bases
    live in per-machine cache directories named after them (tiny-llama-<spec hash>), so those compare by
    that name; a hub name or a local path must be the one the adapter recorded."""
    trained_on = _adapter_config(adapter_dir).get("base_model_name_or_path") or ""
    wanted = model.removeprefix("embedded:")
    if not trained_on or trained_on == model or Path(trained_on).name.startswith(Path(wanted).name + "-"):
        return
    raise ValueError(f"init_adapter {adapter_dir} was trained on the base model {trained_on}, not {model}: an "
                     "adapter only fits the base it was trained on; set `model:` to that base")


def saved_method(adapter_dir: Path, learning_rate: float | None = None) -> AnyMethod:
    """The method a saved peft adapter was trained with (its class's default learning rate unless given)."""
    saved = _adapter_config(adapter_dir)
    cls = PEFT_TYPES.get(saved.get("peft_type"))
    if cls is None:
        raise ValueError(f"init_adapter {adapter_dir}: peft_type {saved.get('peft_type')!r} is not one of "
                         f"{sorted(PEFT_TYPES)}")
    return cls(**cls.knobs_of(saved), **({"learning_rate": learning_rate} if learning_rate is not None else {}))


def method_of_adapter(adapter_dir: Path, method: AnyMethod) -> AnyMethod:
    """The method a saved adapter was trained with, and `method`'s learning rate: what a warm start
    continues. Raises ValueError when `method` sets a knob (or names a method) the adapter contradicts."""
    saved = saved_method(adapter_dir, method.learning_rate)
    if type(saved) is not type(method):
        raise ValueError(f"name: {method.name} contradicts init_adapter {adapter_dir}, a {saved.name} adapter")
    contradicted = [f"{key}: {getattr(method, key)!r} but the adapter has {getattr(saved, key)!r}"
                    for key in sorted(method.model_fields_set - {"name", "learning_rate"})
                    if comparable(getattr(method, key)) != comparable(getattr(saved, key))]
    if contradicted:
        raise ValueError(f"contradicts init_adapter {adapter_dir}: " + "; ".join(contradicted))
    return saved


def comparable(value: Any) -> Any:
    """A knob's value as two adapters are compared: module lists match in any order."""
    return sorted(value) if isinstance(value, list) else value
