"""training.optimizer and training.lr_scheduler: each choice builds, steps, and resumes from its saved state."""

from __future__ import annotations

import io
import textwrap
from typing import get_args

import pytest
import torch

from trials.config import ConfigError, TrainingConfig, load_config
from trials.train import build_optimizer, build_schedule

OPTIMIZERS = get_args(TrainingConfig.model_fields["optimizer"].annotation)
SCHEDULES = get_args(TrainingConfig.model_fields["lr_scheduler"].annotation)
STEPS = 6


def _distance(parameter: torch.nn.Parameter) -> float:
    return float(((parameter.detach() - 1.0) ** 2).sum())


def _step(parameter: torch.nn.Parameter, optimizer, schedule) -> None:
    optimizer.zero_grad()
    ((parameter - 1.0) ** 2).sum().backward()
    optimizer.step()
    schedule.step()


def _built(training: TrainingConfig, seed: int = 0):
    torch.manual_seed(seed)
    parameter = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = build_optimizer([parameter], training, learning_rate=0.05)
    return parameter, optimizer, build_schedule(optimizer, training, total_steps=STEPS)


def test_adamw_is_the_default_with_the_configured_weight_decay():
    _, optimizer, _ = _built(TrainingConfig(weight_decay=0.1))
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["weight_decay"] == 0.1


def test_sgd_has_momentum_and_adafactor_takes_the_learning_rate_given():
    _, sgd, _ = _built(TrainingConfig(optimizer="sgd"))
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    _, adafactor, _ = _built(TrainingConfig(optimizer="adafactor"))
    assert type(adafactor).__name__ == "Adafactor" and adafactor.defaults["lr"] == 0.05
    assert not adafactor.defaults["relative_step"] and not adafactor.defaults["scale_parameter"]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_choice_steps_toward_the_minimum_and_resumes_exactly(name, schedule):
    training = TrainingConfig(optimizer=name, lr_scheduler=schedule, warmup_ratio=0.2, weight_decay=0.01)
    parameter, optimizer, lr_schedule = _built(training)
    start = _distance(parameter)
    for _ in range(STEPS // 2):
        _step(parameter, optimizer, lr_schedule)
    assert _distance(parameter) < start
    # As a checkpoint keeps it (trials/trial.py): read back with weights_only, into a fresh optimiser and schedule.
    saved = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": lr_schedule.state_dict(),
                "weights": parameter.detach().clone()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    resumed, resumed_optimizer, resumed_schedule = _built(training, seed=1)
    with torch.no_grad():
        resumed.copy_(state["weights"])
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed_schedule.load_state_dict(state["scheduler"])
    for _ in range(STEPS - STEPS // 2):
        _step(parameter, optimizer, lr_schedule)
        _step(resumed, resumed_optimizer, resumed_schedule)
    torch.testing.assert_close(resumed, parameter, rtol=0, atol=0)


def test_an_unknown_optimizer_names_the_file_line_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""\
        data:
          qa: qa.jsonl
        training:
          optimizer: lion
        """), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}:4: training.optimizer:") and "'adamw', 'sgd' or 'adafactor'" in problem
    with pytest.raises(ConfigError, match="--set training.optimizer: "):
        load_config(path, ["training.optimizer=adam"])
