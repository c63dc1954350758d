"""Which latest.json keys each bench section owns: running one section replaces its own figures and
keeps every other section's (no training here, merge_previous alone)."""

from __future__ import annotations

import json

import pytest

from bench.run import merge_previous

PREVIOUS = {
    "throughput_ratio_vs_seed": 1.7, "goals_met": {"asha": False},
    "smollm2_champion_test_recall": 0.98,
    "incremental_retention_ours": 0.9, "incremental_new_recall_seed_way": 0.5,
    "general_retention_ours": 0.88, "general_goals_met": {"general_retention_ours": False},
    "sentences_champion_test_rouge_l": 0.93, "sentences_goals_met": {"sentences_champion_lift": True},
    "sections": {"tiny": {"date": "tiny-day"}, "smollm2": {"date": "smollm2-day"},
                 "incremental": {"date": "incremental-day"}, "general": {"date": "general-day"},
                 "sentences": {"date": "sentences-day"}},
}


@pytest.mark.parametrize("ran, new_key", [("tiny", "throughput_ratio_vs_seed"),
                                          ("smollm2", "smollm2_champion_test_recall"),
                                          ("incremental", "incremental_retention_ours"),
                                          ("general", "general_retention_ours"),
                                          ("sentences", "sentences_champion_test_rouge_l")])
def test_a_section_replaces_only_its_own_keys(tmp_path, ran, new_key):
    previous = tmp_path / "latest.json"
    previous.write_text(json.dumps(PREVIOUS))
    merged = merge_previous({new_key: 0.123, "sections": {ran: {"date": "today"}}}, previous, [ran])

    assert merged[new_key] == 0.123
    assert merged["sections"][ran] == {"date": "today"}
    others = {"tiny": ("throughput_ratio_vs_seed", "goals_met"), "smollm2": ("smollm2_champion_test_recall",),
              "incremental": ("incremental_retention_ours", "incremental_new_recall_seed_way"),
              "general": ("general_retention_ours", "general_goals_met"),
              "sentences": ("sentences_champion_test_rouge_l", "sentences_goals_met")}
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
