"""Trainer-state checkpoints sit on shared storage: resuming reads tensors and plain containers, never code.

(tests/test_trial_e2e.py::test_resume_continues_exactly and tests/test_sweep_resume.py show resuming works.)
"""

from __future__ import annotations

import pickle

import pytest
import torch

from trials.trial import TRAINER_STATE, read_checkpoint


class _RunsCodeWhenUnpickled:
    """A pickle that creates a file when it is loaded, as a planted checkpoint could run anything."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_resume_refuses_a_trainer_state_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    torch.save({"optimizer": _RunsCodeWhenUnpickled(marker)}, checkpoint / TRAINER_STATE)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        read_checkpoint(checkpoint)  # refused as it is read, before the model or trainer is touched
    assert not marker.exists()
