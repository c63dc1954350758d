"""bench/rungs.py: the shipped early-stopping set-up found among the replayed ones by its config, and the cheapest
set-up that keeps the full sweep's best val recall, on hand-made learning curves."""

from __future__ import annotations

import pytest

from bench.rungs import replay_recorded, set_up_name, summarise
from bench.scheduler_replay import SET_UPS, compare
from orchestrator.config import AshaConfig
from orchestrator.run_record import OBJECTIVE, VAL_ANSWER_LOSS, VAL_EXACT_RECALL


def _curve(recall: list[float]) -> dict[str, list[float]]:
    return {VAL_EXACT_RECALL: recall, OBJECTIVE: recall, VAL_ANSWER_LOSS: [1 - value for value in recall]}


# The first trial learns; the other three stay low. Eight epochs each, as configs/smollm2.yaml.
CURVES = [_curve([0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9])] + [
    _curve([0.0, 0.02 * k, 0.03 * k, 0.04 * k, 0.05 * k, 0.05 * k, 0.06 * k, 0.06 * k]) for k in (1, 2, 3)]


def test_the_shipped_set_up_is_named_as_the_replay_names_it():
    assert set_up_name(AshaConfig(compare_by="auto", grace_period=2, reduction_factor=3, compare_at_least=2)) \
        == "auto g2 rf3 wait"
    assert set_up_name(AshaConfig(compare_by="objective", grace_period=1, reduction_factor=4, compare_at_least=1)) \
        == "objective g1 rf4"
    assert {set_up_name(AshaConfig(compare_by=by, grace_period=g, reduction_factor=f, compare_at_least=w))
            for by in ("auto", "loss_then_objective", "val_answer_loss", "objective")
            for g in (1, 2) for f in (2, 3, 4) for w in (1, 2)} \
        == {set_up.name for set_up in SET_UPS}


def test_the_cheapest_set_up_keeping_the_best_is_found_and_spends_less_than_the_full_sweep():
    rows = compare([CURVES], slots=2)
    found = summarise(rows, "auto g2 rf3 wait")
    assert found["rungs_shipped"]["set_up"] == "auto g2 rf3 wait"
    cheapest = found["rungs_cheapest_keeping_best"]
    assert cheapest["best_val"] == pytest.approx(0.9)
    assert cheapest["trial_epochs"] < 4 * 8
    assert all(row["trial_epochs"] >= cheapest["trial_epochs"] for row in rows if row["best_val"] >= 0.9 - 1e-9)


def test_recorded_curves_replay_through_todays_set_ups_with_the_shipped_config_named():
    """python -m bench.rungs --replay: the curves bench/results keeps, no new sweep."""
    recorded = {"rungs_trials": [{"trial": str(index), "curve": curve} for index, curve in enumerate(CURVES)],
                "rungs_sweep": {"concurrency": 2}}
    replayed = replay_recorded(recorded)
    assert [row["set_up"] for row in replayed["rungs_replay"]] == [set_up.name for set_up in SET_UPS]
    assert replayed["rungs_shipped"]["set_up"] == "auto g1 rf3 wait"  # configs/smollm2.yaml's sweep.asha
    assert replayed == summarise(compare([CURVES], slots=2), "auto g1 rf3 wait")
