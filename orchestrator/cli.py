"""`orchestrator trial|sweep|promote|ask|ui|report`: the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from orchestrator.errors import SweepError
from trials.config import ConfigError
from trials.data import DataError

# Nothing downloads unless the user names a hub model; the embedded model never touches the network.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML config, e.g. configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path; value parsed as YAML); repeatable")


def cmd_trial(args) -> int:
    from orchestrator.config import load_experiment
    from trials.trial import run_trial

    config = load_experiment(args.config, args.overrides)
    summary = run_trial(config.trial_config(), args.output_dir)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    print(f"wrote {args.output_dir}/metrics.json, adapter/, predictions_val.jsonl")
    return 0


def cmd_sweep(args) -> int:
    from datetime import datetime

    from orchestrator.config import load_experiment
    from orchestrator.sweep import format_leaderboard, run_sweep

    config = load_experiment(args.config, args.overrides)
    name = args.name or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    outcome = run_sweep(config, name, source=str(args.config), resume=args.resume, address=args.address)
    print(f"\nsweep '{name}': {len(outcome.leaderboard)} trials in {outcome.wall_seconds:.0f}s "
          f"(MLflow parent run {outcome.parent_run_id})")
    print(format_leaderboard(outcome.leaderboard))
    for row in outcome.failed:
        print(f"FAILED trial {row['trial']}: {row['error'].strip().splitlines()[-1] if row['error'] else ''}")
    print("compare the trials in the MLflow UI: orchestrator ui")
    return 0 if outcome.succeeded else 1


def cmd_ui(args) -> int:
    from orchestrator.tracking import tracking_uri

    uri = tracking_uri()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(args.port),
               "--host", args.host]
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri}")
    os.execv(sys.executable, command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    trial = commands.add_parser("trial", help="run one trial without Ray")
    _add_config_args(trial)
    trial.add_argument("--output-dir", type=Path, default=Path("runs/trial"), help="where results are written")
    trial.set_defaults(func=cmd_trial)

    sweep = commands.add_parser("sweep", help="run a Ray Tune sweep; every trial is an MLflow child run")
    _add_config_args(sweep)
    sweep.add_argument("--name", help="sweep name (MLflow parent run, Ray experiment); default: a timestamp")
    sweep.add_argument("--resume", action="store_true", help="continue a sweep whose driver was stopped")
    sweep.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    sweep.set_defaults(func=cmd_sweep)

    ui = commands.add_parser("ui", help="start the MLflow UI on the tracking store sweeps write to")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1")
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, SweepError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
