"""The adapter router: the adapter answers questions like the ones it was trained on, the base model the rest.

Protection in training (trials/general.py) keeps most of what the base knew, not all: on SmolLM2 a
protected trial still lost 4 to 16 of ~85 general questions the base answered right, each a first-token
flip of a small model whose right answers sit close to wrong ones (docs/general-knowledge.md). The router
avoids the question instead of the flip. Before training, a logistic regression (scikit-learn) learns to
tell the trial's private questions from general ones, on the base model's hidden state at a prompt's last
token (a layer two thirds of the way up): positives are the train questions (and the old facts it keeps,
`data.retain`), negatives the probe's `protect` questions and chat prompts, which training may see anyway.
From then on every generation (val, test, the probe, `ask`, the registry model) goes through it: each
question routed to the base is answered with the adapter disabled (peft's `disable_adapter()`), so it gets
exactly the base model's reply. On SmolLM2 and the demo data it routes every val and test question to the
adapter and every probe check question and prompt to the base (docs/general-knowledge.md, "The adapter router").

It costs one forward pass over each batch's prompts, and it is saved beside the adapter (router.json), where
`trials.evaluate.load_trained` finds it. Every trial of a sweep fits the same router (same base, same questions),
so the fit and its measurement are cached (`routed_and_measured`): only a sweep's first trial pays for them. A merged export has no base left to route to, so a routed adapter
is exported unmerged (orchestrator/export.py).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trials.formatting import left_padded, prompt_ids
from trials.model import autocast
from trials.model_cache import json_cache_path, model_identity, write_json_atomically

ROUTER_FILE = "router.json"
RECIPE = 2  # bump when the fit or the measurement changes: cached routers are keyed by it
_ATTRIBUTE = "recall_router"  # where a loaded model carries its router


@dataclass(frozen=True)
class Router:
    """A linear classifier on one layer's hidden state at the prompt's last token: standardised
    ((h - mean) / scale), then weights . x + bias > 0 routes to the adapter."""

    layer: int
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float

    def save(self, directory: Path) -> None:
        (Path(directory) / ROUTER_FILE).write_text(json.dumps(asdict(self)) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Router | None:
        path = Path(directory) / ROUTER_FILE
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None

    def to_adapter(self, states: torch.Tensor) -> list[bool]:
        """For each row of hidden states (n x hidden): whether the adapter answers it."""
        mean, scale, weights = (torch.tensor(values) for values in (self.mean, self.scale, self.weights))
        return (((states.float() - mean) / scale) @ weights + self.bias > 0).tolist()


def attach(model, router: Router | None):
    """Make `model` (a peft model) route every generation through `router`; None routes nothing."""
    setattr(model, _ATTRIBUTE, router)
    return model


def router_of(model) -> Router | None:
    return getattr(model, _ATTRIBUTE, None)


@contextlib.contextmanager
def base_only(model):
    """The model to call for the base model's computation: a prompt-learning model's own base (peft's
    `generate` would add the prefix even with the adapter disabled), any other peft model with its
    adapter disabled, a bare model as it is."""
    if not hasattr(model, "disable_adapter"):
        yield model
    elif model.active_peft_config.is_prompt_learning:
        yield model.get_base_model()
    else:
        with model.disable_adapter():
            yield model


@torch.no_grad()
def prompt_states(model, prompts: list[list[int]], layer: int, pad_id: int, device: torch.device,
                  bf16: bool) -> torch.Tensor:
    """The base model's hidden states at each prompt's last token (left-padded: position -1), one batch."""
    batch = {k: v.to(device) for k, v in left_padded(prompts, pad_id).items()}
    # Positions counted from each prompt's first real token, as generation counts them: a prompt's state
    # does not depend on the padding its batch gives it.
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with autocast(device, bf16), base_only(model) as base:
        hidden = base(**batch, output_hidden_states=True).hidden_states[layer]
    return hidden[:, -1].float().cpu()


def routes(model, prompts: list[list[int]], pad_id: int, device: torch.device, bf16: bool) -> list[bool]:
    """For each prompt (token ids) of one batch, whether the adapter answers it: all True without a router."""
    router = router_of(model)
    if router is None:
        return [True] * len(prompts)
    return router.to_adapter(prompt_states(model, prompts, router.layer, pad_id, device, bf16))


def _states(model, tokenizer, questions: list[str], layer: int, batch_size: int, device, bf16) -> torch.Tensor:
    prompts = [prompt_ids(tokenizer, question) for question in questions]
    return torch.cat([prompt_states(model, prompts[start : start + batch_size], layer, tokenizer.pad_token_id,
                                    device, bf16) for start in range(0, len(prompts), batch_size)])


def fit_router(model, tokenizer, private: list[str], general: list[str], *, batch_size: int, device: torch.device,
               bf16: bool) -> Router:
    """A router that sends `private` questions to the adapter and `general` ones to the base, learnt on the
    base model's hidden states (`model` may already carry an adapter: it is disabled for this)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if not private or not general:
        raise ValueError(f"the adapter router needs private and general questions to learn from "
                         f"(got {len(private)} and {len(general)})")
    layer = round(model.config.num_hidden_layers * 2 / 3)
    states = _states(model, tokenizer, [*private, *general], layer, batch_size, device, bf16).numpy()
    labels = [1] * len(private) + [0] * len(general)
    scaler = StandardScaler().fit(states)
    # Balanced: the probe's protect part may be larger or smaller than a data set's train questions.
    classifier = LogisticRegression(max_iter=2000, class_weight="balanced").fit(scaler.transform(states), labels)
    # StandardScaler leaves a constant feature's scale at 1, so no division by 0 when routing.
    return Router(layer, scaler.mean_.tolist(), scaler.scale_.tolist(), classifier.coef_[0].tolist(),
                  float(classifier.intercept_[0]))


def sent_to_adapter(model, tokenizer, questions: list[str], *, batch_size: int, device, bf16: bool,
                    router: Router | None = None) -> list[bool]:
    """For each of `questions`, whether `router` (by default the model's own) sends it to the adapter: all of
    them without a router."""
    router = router or router_of(model)
    if router is None or not questions:
        return [True] * len(questions)
    return router.to_adapter(_states(model, tokenizer, questions, router.layer, batch_size, device, bf16))


def share_to_adapter(model, tokenizer, questions: list[str], *, batch_size: int, device, bf16: bool,
                     router: Router | None = None) -> float:
    """The share of `questions` that `router` (by default the model's own) sends to the adapter."""
    sent = sent_to_adapter(model, tokenizer, questions, batch_size=batch_size, device=device, bf16=bf16,
                           router=router)
    return sum(sent) / len(sent) if sent else 1.0


def routed_and_measured(model, tokenizer, *, private: list[str], general: list[str], unseen_private: list[str],
                        unseen_general: list[str], base_path: str, batch_size: int, device: torch.device,
                        bf16: bool) -> tuple[Router, dict[str, float]]:
    """The router `fit_router` learns from `private` against `general`, and where it sends questions it did not
    learn from: router_val_to_adapter (the share of `unseen_private`), router_check_to_base (of `unseen_general`).

    From the cache, or computed now and cached atomically, keyed by everything that changes them: the base
    model, device type, precision, batch size and the four question lists. A sweep's trials share all of these,
    so only its first trial fits (~18 s of SmolLM2's setup on 2 cores); trials running at once may both fit,
    and either's file is whole."""
    path = json_cache_path("routers", RECIPE, model_identity(base_path), device.type, bf16, batch_size, private,
                           general, unseen_private, unseen_general)
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        return Router(**cached["router"]), cached["measured"]
    router = fit_router(model, tokenizer, private, general, batch_size=batch_size, device=device, bf16=bf16)
    options = {"batch_size": batch_size, "device": device, "bf16": bf16, "router": router}
    measured = {"router_val_to_adapter": share_to_adapter(model, tokenizer, unseen_private, **options),
                "router_check_to_base": 1.0 - share_to_adapter(model, tokenizer, unseen_general, **options)}
    write_json_atomically(path, {"router": asdict(router), "measured": measured})
    return router, measured
