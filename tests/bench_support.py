"""What a test that runs `python -m bench.run` in a subprocess gives it: no hub, and none of the user's Ray or MLflow."""

from __future__ import annotations

import os


def bench_env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env
