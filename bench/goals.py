"""The bench's goals: every threshold, in one place, for the checks and for RESULTS.md's wording.

`tiny_goals_met`, `smollm2_goals_met`, ... give latest.json's `goals_met`, `smollm2_goals_met`, ...;
bench/RESULTS.md.j2 states the same thresholds from these constants.
"""

from __future__ import annotations

# The tiny-model sections (configs/demo.yaml).
THROUGHPUT_RATIO_VS_SEED = 1.5  # our training tokens/s over the seed recipe's
RECALL_MARGIN_OVER_SEED = 0.2  # the sweep's best val recall over the seed's, at equal trial-epochs
OVERHEAD_FRACTION_MAX = 0.15  # of the ASHA sweep's wall
ASHA_EPOCH_SAVING = 2  # no-ASHA trial-epochs over ASHA's (means over sampler seeds)...
ASHA_RECALL_TOLERANCE = 0.05  # ...with ASHA's best trial's test recall at most this far below no-ASHA's

# The SmolLM2 sections (configs/smollm2.yaml).
SMOLLM2_TRAIN_RECALL = 0.98  # the champion's train exact recall
SMOLLM2_TEST_RECALL = 0.9  # the champion's test exact recall (held-out phrasings)...
SMOLLM2_TEST_MARGIN_OVER_SEED = 0.5  # ...and its margin over the seed recipe's
SMOLLM2_THROUGHPUT_RATIO_VS_SEED = 1.5
SMOLLM2_SPEEDUP_VS_PREVIOUS = 2  # training tokens/s over bench/previous.py's code path

# The general section (bench/general.py, configs/smollm2.yaml).
GENERAL_RETENTION = 0.95  # the protected sweep's best trial keeps this share of the base's known check questions
GENERAL_CHAMPION_TEST_RECALL = 0.95  # the protected sweep's promoted champion, on test

# The sentences section (bench/sentences.py, configs/sentences.yaml).
SENTENCES_TEST_ROUGE_L = 0.9  # the promoted champion's mean test ROUGE-L recall...
SENTENCES_LIFT_OVER_BASE = 0.4  # ...and its margin over the base model's on the same questions

# The time_to_champion section (bench/time_to_champion.py, configs/smollm2.yaml).
TIME_TO_CHAMPION_SPEEDUP = 2  # previous path's seconds from `sweep` to a promoted champion over ours...
TIME_TO_CHAMPION_TEST_RECALL = 0.95  # ...with our champion's test recall at least this...
TIME_TO_CHAMPION_TOLERANCE = 0.02  # ...and at most this far below the previous path's champion's


def asha_recall_kept(results: dict) -> bool:
    asha, flat = results["asha_best_test"], results["noasha_best_test"]
    return asha is not None and flat is not None and asha >= flat - ASHA_RECALL_TOLERANCE


def tiny_goals_met(results: dict) -> dict[str, bool]:
    return {
        "throughput_ratio_vs_seed": results["throughput_ratio_vs_seed"] >= THROUGHPUT_RATIO_VS_SEED,
        "recall_best_val": results["recall_best_val"] is not None
        and results["recall_best_val"] >= results["recall_seed_val"] + RECALL_MARGIN_OVER_SEED,
        "overhead_fraction": results["overhead_fraction"] <= OVERHEAD_FRACTION_MAX,
        "asha": results["noasha_trial_epochs"] >= ASHA_EPOCH_SAVING * results["asha_trial_epochs"]
        and asha_recall_kept(results),
    }


def smollm2_goals_met(results: dict) -> dict[str, bool]:
    test = results["smollm2_champion_test_recall"]
    return {
        "smollm2_champion_train_recall": results["smollm2_champion_train_recall"] >= SMOLLM2_TRAIN_RECALL,
        "smollm2_champion_test_recall": test >= SMOLLM2_TEST_RECALL
        and test >= results["smollm2_seed_test_recall"] + SMOLLM2_TEST_MARGIN_OVER_SEED,
        "smollm2_throughput_ratio_vs_seed": results["smollm2_throughput_ratio_vs_seed"]
        >= SMOLLM2_THROUGHPUT_RATIO_VS_SEED,
        "smollm2_speedup_vs_previous": results["smollm2_speedup_vs_previous"] >= SMOLLM2_SPEEDUP_VS_PREVIOUS,
    }


def general_goals_met(results: dict) -> dict[str, bool]:
    retention, test = results["general_retention_ours"], results["general_champion_test_recall"]
    return {"general_retention_ours": retention is not None and retention >= GENERAL_RETENTION,
            "general_champion_test_recall": test is not None and test >= GENERAL_CHAMPION_TEST_RECALL}


def sentences_goals_met(results: dict) -> dict[str, bool]:
    rouge, lift = results["sentences_champion_test_rouge_l"], results["sentences_champion_lift"]
    return {"sentences_champion_test_rouge_l": rouge is not None and rouge >= SENTENCES_TEST_ROUGE_L,
            "sentences_champion_lift": lift is not None and lift >= SENTENCES_LIFT_OVER_BASE}


def time_to_champion_goals_met(results: dict) -> dict[str, bool]:
    ours, previous = results["time_to_champion_ours_test_recall"], results["time_to_champion_previous_test_recall"]
    return {"time_to_champion_speedup": results["time_to_champion_speedup"] >= TIME_TO_CHAMPION_SPEEDUP,
            "time_to_champion_ours_test_recall": (ours is not None and ours >= TIME_TO_CHAMPION_TEST_RECALL
                                                  and (previous is None or ours >= previous - TIME_TO_CHAMPION_TOLERANCE))}
