"""Which latest.json keys each bench section owns: running one section replaces its own figures and
keeps every other section's (no training here, merge_previous alone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.run import merge_previous

PREVIOUS = {
    "throughput_ratio_vs_seed": 1.7, "goals_met": {"asha": False},
    "smollm2_champion_test_recall": 0.98,
    "incremental_retention_ours": 0.9, "incremental_new_recall_seed_way": 0.5,
    "general_retention_ours": 0.88, "general_goals_met": {"general_retention_ours": False},
    "sentences_champion_test_rouge_l": 0.93, "sentences_goals_met": {"sentences_champion_lift": True},
    "time_to_champion_speedup": 2.5, "time_to_champion_goals_met": {"time_to_champion_speedup": True},
    # The steps section owns the MFU figures of both models, and the peaks, whatever their prefix.
    "smollm2_mfu": 0.4, "tiny_mfu": 0.5, "peak_bf16_gflops": 400.0, "steps_threads": {"1_thread_each": [1.0]},
    "sections": {"tiny": {"date": "tiny-day"}, "smollm2": {"date": "smollm2-day"},
                 "incremental": {"date": "incremental-day"}, "general": {"date": "general-day"},
                 "sentences": {"date": "sentences-day"}, "time_to_champion": {"date": "ttc-day"},
                 "steps": {"date": "steps-day"}},
}


@pytest.mark.parametrize("ran, new_key", [("tiny", "throughput_ratio_vs_seed"),
                                          ("smollm2", "smollm2_champion_test_recall"),
                                          ("incremental", "incremental_retention_ours"),
                                          ("general", "general_retention_ours"),
                                          ("sentences", "sentences_champion_test_rouge_l"),
                                          ("time_to_champion", "time_to_champion_speedup"),
                                          ("steps", "smollm2_mfu")])
def test_a_section_replaces_only_its_own_keys(tmp_path, ran, new_key):
    previous = tmp_path / "latest.json"
    previous.write_text(json.dumps(PREVIOUS))
    merged = merge_previous({new_key: 0.123, "sections": {ran: {"date": "today"}}}, previous, [ran])

    assert merged[new_key] == 0.123
    assert merged["sections"][ran] == {"date": "today"}
    others = {"tiny": ("throughput_ratio_vs_seed", "goals_met"), "smollm2": ("smollm2_champion_test_recall",),
              "incremental": ("incremental_retention_ours", "incremental_new_recall_seed_way"),
              "general": ("general_retention_ours", "general_goals_met"),
              "sentences": ("sentences_champion_test_rouge_l", "sentences_goals_met"),
              "time_to_champion": ("time_to_champion_speedup", "time_to_champion_goals_met"),
              "steps": ("smollm2_mfu", "tiny_mfu", "peak_bf16_gflops", "steps_threads")}
    for section, keys in others.items():
        if section == ran:
            # Its previous figures are gone, not mixed with this run's.
            assert all(key == new_key or key not in merged for key in keys), section
            continue
        assert merged["sections"][section] == PREVIOUS["sections"][section]
        for key in keys:
            assert merged[key] == PREVIOUS[key], key


def test_the_sentences_figures_are_the_champions_test_scores_and_the_base_pass():
    """bench/sentences.py's headline figures and goals, from a promoted candidate's test scores."""
    from bench.goals import sentences_goals_met
    from bench.sentences import REQUIRED_KEYS, figures
    from orchestrator.promote import Scored

    champion = Scored("candidate", 0.95, 0.96, 10, "run", "t1", "lora",
                      test_scores={"exact_recall": 0.25, "rouge_l_recall": 0.95, "rouge_l_pass": 0.9, "token_f1": 0.9})
    results = figures(champion, {"base_test_rouge_l_recall": 0.5, "base_test_exact_recall": 0.0})
    assert set(REQUIRED_KEYS) <= set(results)
    assert results["sentences_champion_test_rouge_l"] == 0.95 and results["sentences_champion_test_exact_recall"] == 0.25
    assert results["sentences_champion_lift"] == pytest.approx(0.45)
    assert sentences_goals_met(results) == {"sentences_champion_test_rouge_l": True, "sentences_champion_lift": True}
    # 0.95 against a base of 0.6: above the 0.9 bar, but only 0.35 over what the untrained model already says.
    near = figures(champion, {"base_test_rouge_l_recall": 0.6})
    assert sentences_goals_met(near) == {"sentences_champion_test_rouge_l": True, "sentences_champion_lift": False}
    assert sentences_goals_met(figures(champion, {}))["sentences_champion_lift"] is False  # no base pass logged


def _path(seconds: float, test: float) -> dict:
    return {"seconds": seconds, "test_recall": test, "train_seconds": seconds / 2, "eval_seconds": seconds / 4,
            "trials_reusing_base": 2.0,
            "champion": {"general_retention": 1.0}, "sweep": {"num_trials": 4, "trial_epochs": 20}}


@pytest.mark.parametrize(("ours_seconds", "ours_test", "met"), [
    (1000.0, 0.97, {"time_to_champion_speedup": True, "time_to_champion_ours_test_recall": True}),
    (1500.0, 0.97, {"time_to_champion_speedup": False, "time_to_champion_ours_test_recall": True}),
    (1000.0, 0.94, {"time_to_champion_speedup": True, "time_to_champion_ours_test_recall": False}),  # below 0.95
])
def test_time_to_champion_needs_half_the_time_and_a_champion_as_good(ours_seconds, ours_test, met):
    """bench/time_to_champion.py's goals, and its RESULTS.md rows, from both paths' figures."""
    from bench.goals import time_to_champion_goals_met
    from bench.report import render

    previous = _path(2400.0, 0.983)
    results = {"time_to_champion_previous_s": 2400.0, "time_to_champion_ours_s": ours_seconds,
               "time_to_champion_speedup": 2400.0 / ours_seconds, "time_to_champion_previous_test_recall": 0.983,
               "time_to_champion_ours_test_recall": ours_test,
               "time_to_champion_fixed_cost_s": {"previous": 21.0, "ours": 2.5},
               "time_to_champion_paths": {"previous": previous, "ours": _path(ours_seconds, ours_test)}}
    assert time_to_champion_goals_met(results) == met
    assert time_to_champion_goals_met({**results, "time_to_champion_previous_test_recall": 1.0,
                                       "time_to_champion_ours_test_recall": 0.97})[
        "time_to_champion_ours_test_recall"] is False  # more than 0.02 below previous
    committed = json.loads((Path(__file__).parent.parent / "bench" / "results" / "latest.json").read_text())
    page = render({**committed, **results})
    assert "| previous | 2400 | 20 | 1200 | 600 | 2 of 4 |" in page and f"Speedup **{2400.0 / ours_seconds:.2f}x**" in page
    assert "21.0 s from nothing, 2.5 s as a sweep's next trial" in page
