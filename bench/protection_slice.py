"""One SmolLM2 trial on the demo's 4-person slice (the SmolLM2 test's trial), with a protection setting, for
side-by-side comparisons of training.general_replay, kl_to_base and general_first_token_weight:

    python -m bench.protection_slice --set training.general_replay=1.0 --set training.kl_to_base=4 &
    python -m bench.protection_slice --set training.general_replay=0.5 --set training.kl_to_base=1 &

Each run takes one core (torch threads 1), so two run side by side on 2 cores in ~20 minutes; the last line
is the trial's val recall, general retention and drift. The update is not shrunk (training.adapter_shrink=[])
unless a --set says so: it measures training alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from orchestrator.run_record import GENERAL_DRIFT, GENERAL_KNOWN, GENERAL_RETENTION, TRAIN_EXACT_RECALL, VAL_EXACT_RECALL

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2.yaml"
PEOPLE = 4
KEYS = (VAL_EXACT_RECALL, TRAIN_EXACT_RECALL, GENERAL_KNOWN, GENERAL_RETENTION, GENERAL_DRIFT)


def main(argv: list[str] | None = None) -> None:
    import torch

    from orchestrator.config import load_experiment
    from trials.demo_data import first_people
    from trials.trial import run_trial

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="protection-slice-"))
    data = load_experiment(CONFIG).data
    slice_overrides = first_people(work / "data", data.documents, data.qa, people=PEOPLE)
    config = load_experiment(CONFIG, [*slice_overrides, "training.adapter_shrink=[]", *args.set]).trial_config()
    started = time.perf_counter()
    summary = run_trial(config, work / "trial",
                        log=lambda line: print(f"{time.perf_counter() - started:7.1f} {line}", flush=True))
    print({key: summary.get(key) for key in KEYS}, f"{time.perf_counter() - started:.0f}s", args.set)


if __name__ == "__main__":
    main()
