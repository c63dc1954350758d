"""The `sentences` section: answers that are sentences, on SmolLM2 (configs/sentences.yaml), swept and promoted
by ROUGE-L recall, beside what the base model scores on the same test questions.

    python -m bench.run --sections sentences     # about 40 minutes on 2 idle cores

1. sweep    configs/sentences.yaml as shipped (eval.objective: rouge_l), SENTENCES_SAMPLES trials: the
            config's own trial (its points_to_evaluate) and TPE's first, compared at the rungs.
2. promote  `promote`'s own code: it ranks and gates on test ROUGE-L recall, the metric the sweep optimised.
3. base     the sweep's knowability pre-pass (logged on its parent run): the base model's own test ROUGE-L
            recall. Template words overlap, so an untrained model scores well above 0 (TOFU measured ~0.41
            for Llama-2-7b-chat); the champion's lift over it is the figure that means something.

Exact recall of the same test answers is recorded for comparison: a sentence said with one word more
scores 0 there.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.goals import sentences_goals_met
from bench.library import closed, run_bench_sweep, start_ray
from orchestrator.run_record import EXACT_RECALL, TEST_PREDICTIONS, base_metric
from trials.config import objective_metric

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "sentences.yaml"
SENTENCES_SAMPLES = 2
METRIC = objective_metric("rouge_l")  # what configs/sentences.yaml's eval.objective optimises
REQUIRED_KEYS = (
    "sentences_champion_test_rouge_l", "sentences_base_test_rouge_l", "sentences_champion_test_exact_recall",
    "sentences_champion_lift",
)


def figures(champion, base_metrics: dict) -> dict:
    """The section's headline figures from the promoted candidate's test scores and the sweep run's base pass."""
    test = champion.test_scores or {}
    base = base_metrics.get(base_metric("test", METRIC))
    rouge = test.get(METRIC)
    return {
        "sentences_champion_test_rouge_l": rouge,
        "sentences_champion_test_rouge_l_pass": test.get("rouge_l_pass"),
        "sentences_champion_test_token_f1": test.get("token_f1"),
        "sentences_champion_test_exact_recall": test.get(EXACT_RECALL),
        "sentences_base_test_rouge_l": base,
        "sentences_base_test_exact_recall": base_metrics.get(base_metric("test", EXACT_RECALL)),
        "sentences_champion_lift": None if rouge is None or base is None else rouge - base,
    }


def run(overrides: list[str], settings, work: Path, log) -> dict:
    """The sweep, the promotion and the base model's figures; returns the sentences_* results."""
    import ray

    from orchestrator import tracking
    from orchestrator.config import load_experiment
    from orchestrator.promote import promote

    samples = [f"sweep.num_samples={min(SENTENCES_SAMPLES, load_experiment(CONFIG).sweep.num_samples)}"]
    experiment = load_experiment(CONFIG, [*overrides, *samples, *settings.smollm2_overrides])
    timings = {}
    ray_init = start_ray()
    try:
        started = time.perf_counter()
        sweep = run_bench_sweep(experiment, "sentences", str(CONFIG))
        timings["sweep"] = time.perf_counter() - started
    finally:
        ray.shutdown()
    log(f"sentences: {sweep['num_trials']} trials, {sweep['trial_epochs']} trial-epochs, "
        f"wall {sweep['wall_seconds']:.0f}s")
    base = tracking.client().get_run(sweep["parent_run_id"]).data.metrics
    started = time.perf_counter()
    outcome = promote("sentences", top_k=3, model_name="bench-sentences", experiment=experiment.sweep.experiment,
                      log=log)
    timings["promote"] = time.perf_counter() - started
    champion = outcome.candidates[0]
    results = figures(champion, base)
    log(f"sentences: champion test ROUGE-L recall {results['sentences_champion_test_rouge_l']:.3f} "
        f"(exact {results['sentences_champion_test_exact_recall']:.3f}), base "
        f"{results['sentences_base_test_rouge_l']:.3f}; {outcome.reason}")
    answers = _test_answers(champion.run_id, work)[:6]
    results.update({
        "sentences_champion": {"trial": champion.trial, "method": champion.method, "promoted": outcome.promoted,
                               "reason": outcome.reason, "val_rouge_l": champion.val_recall,
                               "general_retention": champion.general_retention},
        "sentences_answers": answers,
        "sentences_sweep": sweep,
    })
    return closed("sentences", results, timings, ray_init, sentences_goals_met)


def _test_answers(run_id: str, work: Path) -> list[dict]:
    """The champion's test answers beside the expected sentences, as promotion logged them on its run."""
    import json

    from orchestrator import tracking

    target = work / "sentences-answers"
    target.mkdir(parents=True, exist_ok=True)
    text = Path(tracking.client().download_artifacts(run_id, TEST_PREDICTIONS, str(target))).read_text(encoding="utf-8")
    return [{key: record.get(key) for key in ("question", "expected", "got", "rouge_l_recall", "correct")}
            for record in map(json.loads, text.splitlines())]
