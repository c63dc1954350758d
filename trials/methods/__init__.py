"""The PEFT methods a trial can train: one module per method in this package (trials/methods/base.py says
what a module holds), each registered by its own `register(...)` call.

This module imports every method module, then derives from the registry what the rest of the project
branches on: the config's method union (`Method`, a tagged union on `name`), the method names, the peft
types a saved adapter may have, and the search spaces (orchestrator/search_space.py gives each its
section). It also reads saved adapters back into methods, for warm starts and incremental sweeps.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Tag

from trials.methods.base import REGISTRY, MethodSpace, PeftMethod, comparable

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

DEFAULT = "lora"
METHOD_NAMES: tuple[str, ...] = tuple(sorted(REGISTRY, key=lambda name: (name != DEFAULT, name)))  # the default first
METHOD_CLASSES: tuple[type[PeftMethod], ...] = tuple(REGISTRY[name].method for name in METHOD_NAMES)
SPACES: dict[str, type[MethodSpace]] = {name: REGISTRY[name].space for name in METHOD_NAMES}
PEFT_TYPES = {REGISTRY[name].peft_type: REGISTRY[name].method for name in METHOD_NAMES}
AnyMethod = Union[METHOD_CLASSES]  # a tuple subscript is the same as listing the classes
MethodName = Literal[METHOD_NAMES]


def _method_name(value: Any) -> str | None:
    # `name` defaults to lora: `method: {r: 16}` (or `--set method.r=16` on a config without a method
    # section) is a LoRA method, not "Unable to extract tag using discriminator".
    if isinstance(value, dict):
        return value.get("name", DEFAULT)
    return getattr(value, "name", None)


Method = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in zip(METHOD_NAMES, METHOD_CLASSES))],
    Discriminator(_method_name, custom_error_type="method_name",
                  custom_error_message="method.name must be one of " + ", ".join(METHOD_NAMES)),
]


def default_method() -> PeftMethod:
    return REGISTRY[DEFAULT].method()


def _adapter_config(adapter_dir: Path) -> dict:
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


def saved_method(adapter_dir: Path, learning_rate: float | None = None) -> PeftMethod:
    """The method a saved peft adapter was trained with (its class's default learning rate unless given)."""
    saved = _adapter_config(adapter_dir)
    cls = PEFT_TYPES.get(saved.get("peft_type"))
    if cls is None:
        raise ValueError(f"init_adapter {adapter_dir}: peft_type {saved.get('peft_type')!r} is not one of "
                         f"{sorted(PEFT_TYPES)}")
    return cls(**cls.knobs_of(saved), **({"learning_rate": learning_rate} if learning_rate is not None else {}))


def method_of_adapter(adapter_dir: Path, method: PeftMethod) -> PeftMethod:
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
