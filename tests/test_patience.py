"""training.patience: a trial ends itself once its val objective has stopped improving; epochs is a maximum."""

from __future__ import annotations

import pytest
from promote_support import trial_config

from trials.trial import has_plateaued, run_trial


@pytest.mark.parametrize(("objectives", "patience", "expected"), [
    ([0.1, 0.2, 0.2, 0.2], 2, True),    # the best (0.2) came 2 epochs before: none of the last 2 beat it
    ([0.1, 0.2, 0.2, 0.3], 2, False),   # the last epoch beat it
    ([0.5, 0.4, 0.3], 2, True),         # falling counts as not improving
    ([0.5, 0.4], 2, False),             # fewer epochs than patience + 1: too early to tell
    ([0.1, 0.1, 0.1, 0.1], None, False),  # off
    ([0.3, 0.3], 1, True),
])
def test_a_plateau_is_patience_epochs_without_beating_the_best_before_them(objectives, patience, expected):
    assert has_plateaued(objectives, patience) is expected


@pytest.mark.e2e
def test_a_trial_that_stops_improving_ends_before_its_maximum(tmp_path, demo_documents, demo_qa):
    config = trial_config(demo_documents, demo_qa, epochs=6, learning_rate=1e-7)  # too small to learn a fact
    config.training.patience = 2
    summary = run_trial(config, tmp_path / "out", log=lambda _: None)
    objectives = [epoch["val_exact_recall"] for epoch in summary["history"]]
    assert summary["epochs"] == 3 and objectives == [0.0, 0.0, 0.0], objectives
    assert summary["history"][-1]["plateaued"] == 1.0 and "plateaued" not in summary["history"][0]
