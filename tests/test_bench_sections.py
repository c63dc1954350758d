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
    "sections": {"tiny": {"date": "tiny-day"}, "smollm2": {"date": "smollm2-day"},
                 "incremental": {"date": "incremental-day"}, "general": {"date": "general-day"}},
}


@pytest.mark.parametrize("ran, new_key", [("tiny", "throughput_ratio_vs_seed"),
                                          ("smollm2", "smollm2_champion_test_recall"),
                                          ("incremental", "incremental_retention_ours"),
                                          ("general", "general_retention_ours")])
def test_a_section_replaces_only_its_own_keys(tmp_path, ran, new_key):
    previous = tmp_path / "latest.json"
    previous.write_text(json.dumps(PREVIOUS))
    merged = merge_previous({new_key: 0.123, "sections": {ran: {"date": "today"}}}, previous, [ran])

    assert merged[new_key] == 0.123
    assert merged["sections"][ran] == {"date": "today"}
    others = {"tiny": ("throughput_ratio_vs_seed", "goals_met"), "smollm2": ("smollm2_champion_test_recall",),
              "incremental": ("incremental_retention_ours", "incremental_new_recall_seed_way"),
              "general": ("general_retention_ours", "general_goals_met")}
    for section, keys in others.items():
        if section == ran:
            # Its previous figures are gone, not mixed with this run's.
            assert all(key == new_key or key not in merged for key in keys), section
            continue
        assert merged["sections"][section] == PREVIOUS["sections"][section]
        for key in keys:
            assert merged[key] == PREVIOUS[key], key
