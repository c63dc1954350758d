"""`orchestrator trial|sweep|promote|ask|ui|report`: the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    trial = commands.add_parser("trial", help="run one trial without Ray")
    _add_config_args(trial)
    trial.add_argument("--output-dir", type=Path, default=Path("runs/trial"), help="where results are written")
    trial.set_defaults(func=cmd_trial)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
