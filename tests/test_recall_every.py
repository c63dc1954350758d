"""eval.recall_every: a trial generates answers only at the epochs that need them (every N, the sweep's rungs,
its last), and reports its val answers' loss at every epoch."""

from __future__ import annotations

import pytest
from promote_support import trial_config

from trials.ledger import LEDGER, read_jsonl
from trials.trial import run_trial

pytestmark = pytest.mark.e2e


def test_answers_are_scored_at_the_rungs_and_the_last_epoch_and_the_loss_every_epoch(tmp_path, demo_documents,
                                                                                     demo_qa):
    config = trial_config(demo_documents, demo_qa, epochs=5, learning_rate=1e-3)
    config.eval.recall_every = 0
    config.eval.general = None
    config.eval.general_epochs = [2]  # as a sweep sets them: its rungs
    summary = run_trial(config, tmp_path / "out", log=lambda _: None)
    history = summary["history"]
    assert [epoch["epoch"] for epoch in history if "val_exact_recall" in epoch] == [2, 5]
    assert all("val_answer_loss" in epoch for epoch in history) and "train_exact_recall" not in history[0]
    assert "val_exact_recall" in summary and summary["epochs"] == 5
    ledger = read_jsonl(tmp_path / "out" / LEDGER)
    assert sorted({row["epoch"] for row in ledger}) == [2, 5]
    assert len([row for row in ledger if row["epoch"] == 2]) == history[1]["val_questions"]  # one row per val question

    config.eval.recall_every = 2  # and every second epoch
    summary = run_trial(config, tmp_path / "every-2", log=lambda _: None)
    assert [epoch["epoch"] for epoch in summary["history"] if "val_exact_recall" in epoch] == [2, 4, 5]
