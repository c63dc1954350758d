"""The `general` section: what a champion keeps of the base model's general knowledge, on SmolLM2 with the
full demo data, side by side in one run.

    python -m bench.run --sections general --keep     # about 35 minutes on 2 idle cores

1. ours    configs/smollm2.yaml's sweep as shipped: the adapter router (training.adapter_router: general
           questions answered by the base model, adapter disabled) and the general floor in the objective
           (sweep.general_floor), with whatever protection in training the config turns on, then
           `promote`'s own code: the champion's test recall and general retention.
2. plain   the same sweep with protection off: no router, no replay rows, no KL, no shrink, general_floor 0 (the objective and
           promotion no longer look at general knowledge); its best trial by the objective is the one an
           unprotected sweep would promote.
3. answers the base model, the plain best trial and our champion asked a few general questions and a private
           one, greedy, as `orchestrator ask` asks (docs/general-knowledge.md's before/after).

Both sweeps run GENERAL_SAMPLES trials (not the config's 8), so the pair fits in about half an hour on 2
cores: the config's own trial (its points_to_evaluate) and TPE's first random one, the same in both (same
sampler seed), compared at the rungs as in any sweep.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.goals import general_goals_met
from bench.library import closed, run_bench_sweep, start_ray
from orchestrator.run_record import (ADAPTER, BASE_GENERAL_CHECK, BASE_GENERAL_KNOWN, EXACT_RECALL, GENERAL_DRIFT,
                                     GENERAL_RETENTION, OBJECTIVE, ROUTER_CHECK_TO_BASE, ROUTER_VAL_TO_ADAPTER,
                                     TRIAL_CONFIG, base_metric)

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2.yaml"
GENERAL_SAMPLES = 2
PLAIN = ["training.general_replay=0", "training.kl_to_base=0", "training.general_first_token_weight=1",
         "training.adapter_shrink=[]", "training.adapter_router=false", "sweep.general_floor=0"]
QUESTIONS = ("What is the capital of France?", "How many legs does a spider have?",
             "What is the chemical symbol for gold?", "Who wrote Romeo and Juliet?")
REQUIRED_KEYS = (
    "general_base_known", "general_retention_ours", "general_retention_plain", "general_drift_ours",
    "general_drift_plain", "general_champion_test_recall", "general_champion_general_retention",
)


def _best(sweep: dict, client) -> dict:
    """The sweep's best trial by its objective (what promotion ranks by), with its general figures."""
    finished = [t for t in sweep["trials"] if t["status"] == "FINISHED"]
    runs = {t["run_id"]: client.get_run(t["run_id"]).data.metrics for t in finished}
    best = max(finished, key=lambda t: runs[t["run_id"]].get(OBJECTIVE, -2))
    metrics = runs[best["run_id"]]
    return {**best, **{key: metrics.get(key) for key in (OBJECTIVE, GENERAL_RETENTION, GENERAL_DRIFT,
                                                         ROUTER_VAL_TO_ADAPTER, ROUTER_CHECK_TO_BASE)}}


def _answers(adapter_run_id: str | None, config, work: Path, questions: list[str]) -> list[str]:
    """Greedy answers, as `orchestrator ask` gives them, of a trial's adapter (None: the base model)."""
    import torch

    from orchestrator import tracking
    from trials.config import TrialConfig
    from trials.evaluate import load_trained
    from trials.model import load_for
    from trials.recall import cut_answer, generate_answers

    if adapter_run_id is None:
        loaded = load_for(config)
        model, tokenizer, device, bf16 = loaded.model, loaded.tokenizer, loaded.device, loaded.bf16
    else:
        target = work / adapter_run_id
        target.mkdir(parents=True, exist_ok=True)
        client = tracking.client()
        adapter = Path(client.download_artifacts(adapter_run_id, ADAPTER, str(target)))
        trial = TrialConfig.model_validate_json(
            Path(client.download_artifacts(adapter_run_id, TRIAL_CONFIG, str(target))).read_text())
        model, tokenizer, device, bf16 = load_trained(adapter, trial)
    with torch.no_grad():
        replies = generate_answers(model, tokenizer, questions, batch_size=8, max_new_tokens=24, device=device,
                                   bf16=bf16)
    return [cut_answer(reply) for reply in replies]


def run(overrides: list[str], settings, work: Path, log) -> dict:
    """Both sweeps, the promotion, the answers; returns the general_* results."""
    import ray

    from orchestrator import tracking
    from orchestrator.config import load_experiment
    from orchestrator.promote import promote
    from trials.data import load_knowledge

    samples = [f"sweep.num_samples={min(GENERAL_SAMPLES, load_experiment(CONFIG).sweep.num_samples)}"]
    ours = load_experiment(CONFIG, [*overrides, *samples, *settings.smollm2_overrides])
    plain = load_experiment(CONFIG, [*overrides, *samples, *settings.smollm2_overrides, *PLAIN])
    timings, sweeps = {}, {}
    ray_init = start_ray()
    try:
        for name, experiment in (("general-ours", ours), ("general-plain", plain)):
            started = time.perf_counter()
            sweeps[name] = run_bench_sweep(experiment, name, str(CONFIG))
            timings[name] = time.perf_counter() - started
            log(f"{name}: {sweeps[name]['num_trials']} trials, {sweeps[name]['trial_epochs']} trial-epochs, "
                f"wall {sweeps[name]['wall_seconds']:.0f}s")
    finally:
        ray.shutdown()
    client = tracking.client()
    base = client.get_run(sweeps["general-ours"]["parent_run_id"]).data.metrics
    started = time.perf_counter()
    outcome = promote("general-ours", top_k=3, model_name="bench-general", experiment=ours.sweep.experiment, log=log)
    timings["promote"] = time.perf_counter() - started
    best_ours, best_plain = _best(sweeps["general-ours"], client), _best(sweeps["general-plain"], client)
    champion = outcome.candidates[0]
    private = load_knowledge(ours.data).split("test")[0]
    questions = [*QUESTIONS, private.question]
    answers = {"question": questions, "expected": ["Paris", "8", "Au", "William Shakespeare", private.answer],
               "base": _answers(None, ours, work, questions),
               "plain": _answers(best_plain["run_id"], ours, work, questions),
               "ours": _answers(champion.run_id, ours, work, questions)}
    log(f"general: base knows {base.get(BASE_GENERAL_KNOWN)}; retention ours {champion.general_retention} "
        f"plain {best_plain[GENERAL_RETENTION]}; champion test {champion.test_recall:.3f}; France: "
        f"base {answers['base'][0]!r}, plain {answers['plain'][0]!r}, ours {answers['ours'][0]!r}")
    results = {
        "general_base_known": base.get(BASE_GENERAL_KNOWN),
        "general_base_check_questions": base.get(BASE_GENERAL_CHECK),
        "general_base_test_recall": base.get(base_metric("test", EXACT_RECALL)),
        "general_retention_ours": best_ours[GENERAL_RETENTION],
        "general_retention_plain": best_plain[GENERAL_RETENTION],
        "general_drift_ours": best_ours[GENERAL_DRIFT],
        "general_drift_plain": best_plain[GENERAL_DRIFT],
        "general_champion_test_recall": champion.test_recall,
        "general_champion_general_retention": champion.general_retention,
        "general_protection": {"adapter_router": ours.training.adapter_router,
                               "general_replay": ours.training.general_replay, "kl_to_base": ours.training.kl_to_base,
                               "general_first_token_weight": ours.training.general_first_token_weight,
                               "adapter_shrink": ours.training.adapter_shrink,
                               "general_floor": ours.sweep.general_floor},
        "general_champion": {"trial": champion.trial, "promoted": outcome.promoted, "reason": outcome.reason,
                             "drift": champion.general_drift, "val": champion.val_recall},
        "general_best_trials": {"ours": best_ours, "plain": best_plain},
        "general_answers": answers,
        "general_sweeps": sweeps,
    }
    return closed("general", results, timings, ray_init, general_goals_met)
