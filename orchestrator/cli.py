"""Sweeps that teach an open chat LLM private facts: Ray Tune runs the trials, Optuna searches LoRA and
prefix-tuning, every trial is an MLflow child run of its sweep, and the winner on a locked test split becomes
the registry model's `champion`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from orchestrator.errors import PromotionError, SweepError
from orchestrator.interrupts import SweepInterrupted
from orchestrator.run_record import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME, champion_uri
from trials.config import ConfigError
from trials.data import DataError

# Nothing downloads unless the user names a hub model; the embedded model never touches the network.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `promote`'s exit status when its gate refused the candidate: 0 means a trial of the sweep is the
# champion now, 2 an error, so a script can tell the three apart.
NOTHING_PROMOTED = 3
EXPORT_REFUSED = 3  # the export scored below the registered adapter by more than the tolerance


# The evening-to-morning flow, shown under `orchestrator --help`.
WORKFLOW = """a sweep, from a config to a champion:
  orchestrator sweep configs/demo.yaml --name first   # trials as MLflow child runs of the sweep's run
  orchestrator ui                                     # compare them in the MLflow UI
  orchestrator report --sweep first                   # leaderboard, plots and one HTML page
  orchestrator promote --sweep first                  # test the top trials; the best becomes @champion
  orchestrator ask "Which team is Piet Lindqvist on?" # ask the champion
  orchestrator export --merge --to champion-hf        # a Hugging Face checkpoint of it, verified
`orchestrator COMMAND --help` describes each command and shows its defaults."""


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default after its help, except where there is nothing to show (a flag, None, an empty
    list) or the help already says it in words."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default in (None, [], argparse.SUPPRESS) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML config, e.g. configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path; value parsed as YAML), e.g. --set training.epochs=4; "
                             "repeatable")


def cmd_trial(args) -> int:
    from orchestrator.config import load_experiment
    from trials.train import TrainingDiverged
    from trials.trial import run_trial

    config = load_experiment(args.config, args.overrides)
    try:
        summary = run_trial(config.trial_config(), args.output_dir)
    except TrainingDiverged as error:  # a result, not a bug: one line, and a failed trial's exit status
        print(f"error: {error}; the trial failed ({args.output_dir}/metrics.json)", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    print(f"wrote {args.output_dir}/metrics.json, adapter/, predictions_val.jsonl, ledger.jsonl")
    return 0


def cmd_sweep(args) -> int:
    from datetime import datetime

    from orchestrator.config import load_experiment
    from orchestrator.leaderboard import format_leaderboard
    from orchestrator.sweep import run_sweep

    if args.trust_state and not args.resume:
        raise SweepError("--trust-state goes with --resume: a new sweep writes (and signs) its own state")
    config = load_experiment(args.config, args.overrides)
    name = args.name or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    outcome = run_sweep(config, name, source=str(args.config), resume=args.resume, address=args.address,
                        start=args.start, verbose=args.verbose, overrides=args.overrides,
                        trust_state=args.trust_state)
    print(f"\nsweep '{name}': {len(outcome.leaderboard)} trials in {outcome.wall_seconds:.0f}s "
          f"(MLflow parent run {outcome.parent_run_id})")
    print(format_leaderboard(outcome.leaderboard))
    for row in outcome.failed:
        print(f"FAILED trial {row['trial']}: {row['error']}")
    if outcome.failed:
        print("the whole error of a failed trial: its MLflow run's recall.error tag")
    print("compare the trials in the MLflow UI: orchestrator ui")
    return 0 if outcome.succeeded else 1


def _quiet_loading() -> None:
    """No progress bars for the small downloads and loads of promote/ask (a hub download keeps its own)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def cmd_promote(args) -> int:
    from orchestrator.promote import print_promotion, promote

    _quiet_loading()
    outcome = promote(args.sweep, top_k=args.top_k, model_name=args.model_name, force=args.force,
                      min_test_recall=args.min_test_recall, allow_incomplete=args.allow_incomplete,
                      experiment=args.experiment, log=lambda line: print(line, file=sys.stderr))
    print_promotion(outcome)
    return NOTHING_PROMOTED if outcome.refused else 0


def _load_registered(model_uri: str):
    """The registered model, loaded, with how long that took on stderr (stdout is for answers); None when
    it cannot load, with why on stderr."""
    import mlflow

    from orchestrator.tracking import use_store

    _quiet_loading()
    use_store()
    started = time.perf_counter()
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as error:
        print(f"error: {_unloadable(model_uri, error.message)}", file=sys.stderr)
        return None
    print(f"loaded {model_uri} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return model


def cmd_ask(args) -> int:
    model = _load_registered(args.model)
    if model is None:
        return 2
    print(model.predict([args.question])[0])
    return 0


def cmd_chat(args) -> int:
    """One load, then a question per line from stdin (a terminal or a pipe) until it ends; blank lines ask
    nothing. The prompt goes to stderr, and only at a terminal, so piped answers are one line each."""
    model = _load_registered(args.model)
    if model is None:
        return 2
    at_terminal = sys.stdin.isatty()
    if at_terminal:
        print("a question per line; Ctrl-D ends", file=sys.stderr)
    while True:
        if at_terminal:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        if line.strip():
            print(model.predict([line.strip()])[0], flush=True)


def _question(text: str) -> str:
    """argparse's type for `ask`'s question: an empty one is refused before a model loads (argparse names
    the argument and exits 2)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: ask the model something, e.g. "
                                         "orchestrator ask \"Which team is Piet Lindqvist on?\"")
    return text


def _tolerance(text: str) -> float:
    """argparse's type for `export --tolerance`: a drop in recall, between 0 and 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (a drop in a share of questions answered right)")
    return value


def _unloadable(model_uri: str, message: str) -> str:
    """Why `ask` could not load its model: most often no sweep was promoted yet to give it the alias."""
    import re

    from orchestrator import hints, tracking

    alias = re.fullmatch(r"models:/([^/@]+)@([^/@]+)", model_uri)
    if alias:
        client = tracking.client()
        if not hints.has_alias(client, alias[1], alias[2]):
            return hints.no_alias(client, alias[1], alias[2])
    return f"cannot load {model_uri}: {message}"


def cmd_export(args) -> int:
    from orchestrator.export import export
    from orchestrator.tracking import use_store

    _quiet_loading()
    use_store()
    outcome = export(args.model, args.to, merge=args.merge, tolerance=args.tolerance,
                     log=lambda line: print(line, file=sys.stderr))
    if not outcome.verified:
        print(f"refused: {'; '.join(outcome.drops())}: a drop of more than {outcome.tolerance:g}; nothing "
              f"written to {args.to}", file=sys.stderr)
        return EXPORT_REFUSED
    figures = (f"test exact recall {outcome.export_test_exact_recall:.3f} exported vs "
               f"{outcome.adapter_test_exact_recall:.3f} registered, on {outcome.test_questions} questions")
    if outcome.general_questions:
        figures += (f"; general questions right {outcome.export_general_right:.3f} vs "
                    f"{outcome.adapter_general_right:.3f}, on {outcome.general_questions}")
    kind = "merged checkpoint (transformers alone loads it)" if outcome.merged else "adapter + pinned base reference"
    print(f"verified: {args.model} -> {args.to}, {kind}; {figures}")
    return 0


def cmd_demo(args) -> int:
    """Sweep -> promote -> ask the champion one question it was taught; then where to look.
    With --incremental, a second round teaches the champion new people from it, keeping the old."""
    from datetime import datetime

    from orchestrator.config import load_experiment
    from orchestrator.tracking import use_store
    from trials.data import load_knowledge

    config = load_experiment(args.config, args.overrides)
    name = args.name or datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    steps = 6 if args.incremental else 3
    if not _demo_round(config, name, str(args.config), args.overrides, 1, steps):
        return 1
    asked = [load_knowledge(config.data).split("train")[0]]
    if args.incremental:
        batch2 = Path(__file__).resolve().parent.parent / "data" / "demo-batch2"
        overrides = [*args.overrides, f"data.qa={batch2 / 'qa.jsonl'}",
                     f"data.documents={sorted(map(str, (batch2 / 'documents').glob('*.txt')))}"]
        second = load_experiment(args.config, overrides)
        if not _demo_round(second, f"{name}-batch2", str(args.config), overrides, 4, steps, start=champion_uri()):
            return 1
        asked.append(load_knowledge(second.data).split("train")[0])

    import mlflow

    print(f"== {steps}/{steps} ask the champion {'a question' if len(asked) == 1 else 'a question from each batch'}"
          " it was taught")
    uri = use_store()
    model = mlflow.pyfunc.load_model(champion_uri())
    for row, answer in zip(asked, model.predict([row.question for row in asked])):
        print(f"question: {row.question}\nexpected: {row.answer}\nanswer:   {answer}")

    print(f"\nask it yourself:        orchestrator ask \"{asked[-1].question}\"")
    print(f"serve it (venv active): mlflow models serve -m {champion_uri()} --env-manager local --port 5001")
    print(f"open the MLflow UI:     orchestrator ui   (or: mlflow ui --backend-store-uri {uri})")
    return 0


def _demo_round(config, name: str, source: str, overrides: list[str], step: int, steps: int,
                start: str | None = None) -> bool:
    """One sweep (incremental from `start` when given) and its promotion; False when no trial finished."""
    from orchestrator.leaderboard import format_leaderboard
    from orchestrator.promote import print_promotion, promote
    from orchestrator.sweep import run_sweep

    how = f"incremental from {start}, " if start else ""
    print(f"== {step}/{steps} sweep '{name}': {how}{config.sweep.num_samples} trials, each an MLflow child run")
    outcome = run_sweep(config, name, source=source, start=start, overrides=overrides)
    print(format_leaderboard(outcome.leaderboard))
    if not outcome.succeeded:
        print("no trial finished: nothing to promote", file=sys.stderr)
        return False
    print(f"== {step + 1}/{steps} promote: the top trials by the sweep's objective, re-scored on the test split"
          f"{' (new and old facts)' if start else ''}, against the champion")
    _quiet_loading()
    print_promotion(promote(name, experiment=config.sweep.experiment))
    return True


def cmd_report(args) -> int:
    from orchestrator.report import report

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per small file read back
    text, paths = report(args.sweep, args.experiment, args.output_dir)
    print(text)
    print("written (also on the sweep's MLflow run, under report/): " + ", ".join(str(p) for p in paths))
    print(f"open or mail the page: {paths[-1]}")
    return 0


def cmd_config(args) -> int:
    from orchestrator import config_reference

    if args.explain is None:
        print(config_reference.render(), end="")
        return 0
    try:
        print(config_reference.explain(args.explain))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_ui(args) -> int:
    from orchestrator.server import mlflow_server_env
    from orchestrator.tracking import tracking_uri

    uri = tracking_uri()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(args.port),
               "--host", args.host, "--workers", str(args.workers)]
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri}")
    empty = _empty_store(uri)
    if empty:
        print(empty)
    _show_trials(uri, f"http://{args.host}:{args.port}", args.experiment, args.browser)
    sys.stdout.flush()  # exec replaces this process: what print buffered would be lost
    os.execve(sys.executable, command, mlflow_server_env())  # one worker, no job runner: see --workers


def _show_trials(uri: str, base_url: str, experiment: str, browser: bool) -> None:
    """Print the link to the sweeps' trials, and open it once the UI answers where a desktop browser is."""
    from orchestrator import mlflow_ui, tracking

    client = tracking.client(uri)
    experiment_id = tracking.experiment_id(client, experiment)  # created if no sweep has yet: the link works
    mlflow_ui.publish_view(client, experiment_id)
    link = mlflow_ui.runs_link(base_url, experiment_id)
    print(f"the trials, nested under their sweep's run (click its + to unfold them):\n  {link}")
    if browser and mlflow_ui.desktop_browser():
        mlflow_ui.open_when_up(link, base_url)


def _empty_store(uri: str) -> str | None:
    """The line saying the store holds no sweep yet, or None; a store that cannot be read says nothing
    here (the UI itself reports it) rather than keep the UI from starting. (A tracking server that is
    down was refused by main, NEEDS_TRACKING.)"""
    from orchestrator import hints, tracking

    try:
        return hints.no_sweeps(tracking.client(uri))
    except Exception:
        return None


def cmd_server(args) -> int:
    from orchestrator.server import run_server

    return run_server(args.data_dir, args.host, args.port, args.backend_store_uri, args.allowed_hosts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__, epilog=WORKFLOW,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **kwargs) -> argparse.ArgumentParser:
        """A subcommand whose --help starts with what it is for and shows every default."""
        return commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                   formatter_class=_HelpWithDefaults, **kwargs)

    trial = command("trial", help="run one trial without Ray")
    _add_config_args(trial)
    trial.add_argument("--output-dir", type=Path, default=Path("runs/trial"), help="where results are written")
    trial.set_defaults(func=cmd_trial)

    sweep = command("sweep", help="run a Ray Tune sweep; every trial is an MLflow child run")
    _add_config_args(sweep)
    sweep.add_argument("--name", help="sweep name (MLflow parent run, Ray experiment); default: a timestamp")
    sweep.add_argument("--resume", action="store_true", help="continue a sweep whose driver was stopped")
    sweep.add_argument("--trust-state", action="store_true",
                       help="with --resume: resume even though the experiment state in sweep.storage_path is not "
                            "signed by this machine's key (RECALL_STATE_KEY), and sign it. Ray runs code from that "
                            "state: only if you trust everyone who can write to sweep.storage_path")
    sweep.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    sweep.add_argument("--from", dest="start", metavar="SOURCE",
                       help="incremental: continue this adapter and keep the facts it knows: models:/NAME@ALIAS, "
                            "models:/NAME/VERSION, a trial run id, or an adapter directory (then give data.retain)")
    sweep.add_argument("--verbose", action="store_true",
                       help="a line per trial per epoch (loss, val recall) above the progress line")
    sweep.set_defaults(func=cmd_sweep)

    promote = command("promote", help="register a sweep's best adapter (judged on the test split) "
                                      "as the registry model's champion",
                      epilog=f"exit status: 0 promoted (also when a promote running at the same time "
                             f"registered the same trial first), {NOTHING_PROMOTED} nothing promoted "
                             "(the candidate did not beat the champion, or the first champion's floor), "
                             "2 an error")
    promote.add_argument("--sweep", help="sweep name (default: the newest sweep)")
    promote.add_argument("--top-k", type=int, default=3, help="how many trials, best by the sweep's objective first, to score on test")
    promote.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="registered model name")
    promote.add_argument("--force", action="store_true",
                         help="promote the best candidate even if it does not beat the champion (or the first "
                              "champion's floor) on test")
    promote.add_argument("--min-test-recall", type=float, default=0.0, metavar="X",
                         help="with no champion yet, the candidate's test score (by the sweep's eval.objective: "
                              "exact recall by default) must be above X and above the sweep's seed-recipe "
                              "trial's")
    promote.add_argument("--allow-incomplete", action="store_true",
                         help="promote from a sweep that was stopped before it finished (its run is KILLED)")
    promote.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment holding the sweeps")
    promote.set_defaults(func=cmd_promote)

    ask = command("ask", help="answer a question with a registered model (default: the champion)")
    ask.add_argument("question", type=_question, help="the question, quoted")
    ask.add_argument("--model", default=champion_uri(), help="MLflow model URI")
    ask.set_defaults(func=cmd_ask)

    chat = command("chat", help="load a registered model once, then answer a question per line of input",
                   epilog="from a file or a pipe, an answer per line: orchestrator chat < questions.txt")
    chat.add_argument("--model", default=champion_uri(), help="MLflow model URI")
    chat.set_defaults(func=cmd_chat)

    export = command("export", help="write a registered model as files Hugging Face loads, verified on its "
                                    "own test facts",
                     epilog=f"exit status: 0 verified, {EXPORT_REFUSED} refused (the export's test exact recall, "
                            "or its share of the general probe's check questions answered right, fell more than "
                            "--tolerance below the registered adapter's; nothing is written), 2 an "
                            "error. LoRA, DoRA and IA3 merge; prefix-tuning cannot, and is exported as an adapter")
    export.add_argument("model", nargs="?", default=champion_uri(), metavar="MODEL_URI",
                        help="MLflow model URI, e.g. models:/recall-champion/2")
    export.add_argument("--to", type=Path, required=True, metavar="DIR",
                        help="a new (or empty) directory for the export")
    export.add_argument("--merge", action="store_true",
                        help="merge the adapter into the base's weights: a standalone checkpoint in the base's "
                             "dtype, with the tokenizer and chat template (default: the adapter and a pinned "
                             "reference to its base)")
    export.add_argument("--tolerance", type=_tolerance, default=0.02,
                        help="the largest drop, export against the registered adapter, in test exact recall and "
                             "in general questions answered right, that still verifies")
    export.set_defaults(func=cmd_export)

    demo = command("demo", help="sweep, promote the best, ask the champion a question")
    _add_config_args(demo)
    demo.add_argument("--name", help="sweep name (default: demo-<timestamp>)")
    demo.add_argument("--incremental", action="store_true",
                      help="then teach the champion the demo's second batch of people (data/demo-batch2) in an "
                           "incremental sweep from it, promote, and ask about both batches")
    demo.set_defaults(func=cmd_demo)

    report = command("report", help="a sweep's leaderboard, plots (Optuna's too), the champion's "
                                    "answers and one HTML page, read back from MLflow and the study")
    report.add_argument("--sweep", help="sweep name (default: the newest sweep)")
    report.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment holding the sweeps")
    report.add_argument("--output-dir", type=Path, default=Path("runs/report"), help="where the files go")
    report.set_defaults(func=cmd_report)

    config = command("config", help="the config reference: every key's type, default, bounds and meaning "
                                    "(docs/config.md), or one key's")
    config.add_argument("--explain", metavar="KEY", help="one dotted key, as --set takes it, e.g. training.epochs "
                                                         "(default: print the whole reference)")
    config.set_defaults(func=cmd_config)

    ui = command("ui", help="start the MLflow UI on the tracking store sweeps write to")
    ui.add_argument("--port", type=int, default=5000, help="port the UI listens on")
    ui.add_argument("--host", default="127.0.0.1", help="address the UI listens on; 0.0.0.0 opens it to the "
                                                         "network (no authentication)")
    ui.add_argument("--workers", type=int, default=1,
                    help="the UI server's worker processes (mlflow ui --workers, whose own default is 4): one "
                         "starts fast and stays small on a laptop; more serve several users at once")
    ui.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                    help="MLflow experiment whose trials the printed link shows")
    ui.add_argument("--no-browser", dest="browser", action="store_false",
                    help="only print the link (a browser is opened only on a desktop anyway)")
    ui.set_defaults(func=cmd_ui)

    server = command("server", help="a team's MLflow tracking server: PostgreSQL backend, "
                                    "artifacts served through it (infra/README.md)")
    server.add_argument("--data-dir", type=Path, default=Path("mlflow-server"),
                        help="PostgreSQL data (pgdata/) and artifacts (artifacts/)")
    server.add_argument("--host", default="127.0.0.1", help="0.0.0.0 opens it to the network (no authentication)")
    server.add_argument("--port", type=int, default=5000, help="port the tracking server listens on")
    server.add_argument("--backend-store-uri", metavar="postgresql+psycopg2://...",
                        help="an existing database instead of the private PostgreSQL in DATA_DIR/pgdata")
    server.add_argument("--allowed-hosts", metavar="HOST:PORT,...",
                        help="Host headers the server answers, replacing MLflow's default (localhost and private "
                             "IPs), e.g. mlflow-host:5000,localhost:* (mlflow server --allowed-hosts)")
    server.set_defaults(func=cmd_server)
    return parser


# Commands that read or write the tracking store: a server that is down fails them in seconds, naming
# the URI, instead of after MLflow's minutes of retries (`sweep` and `demo` check it themselves,
# after the data, which is cheaper to get wrong).
NEEDS_TRACKING = ("promote", "ask", "chat", "export", "report", "ui")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in NEEDS_TRACKING:
            from orchestrator.server import check_reachable
            from orchestrator.tracking import tracking_uri

            check_reachable(tracking_uri())
        return args.func(args)
    except SweepInterrupted as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C: whatever was running stopped at once
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, DataError, SweepError, PromotionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
