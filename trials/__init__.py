"""Everything inside one trial: data, model, peft method, training loop, exact-recall scoring.

Importable and runnable without Ray: `orchestrator trial` and every Tune trial call run_trial.
"""
