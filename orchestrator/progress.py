"""A sweep's progress on the driver's terminal: trials done, running and pending, the best val recall
so far and its trial, the time elapsed and an estimate of the time left.

On a terminal it is one live line (rich.live) below the trial lines; anywhere else (CI, a log file,
`ray job logs`) it is plain text, one status line at each trial's end and every STATUS_EVERY_S
seconds, with no escape codes. A line per trial per epoch only with `orchestrator sweep --verbose`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.run_record import VAL_EXACT_RECALL

ENDED, FAILED, RUNNING = ("TERMINATED", "ERROR"), "ERROR", "RUNNING"  # Tune's Trial.status values
STATUS_EVERY_S = 60.0


def _sweep_console() -> Console:
    console = Console(highlight=False)
    # A log or a pipe: rich would wrap at 80 columns, cutting a trial's knobs mid-line.
    return console if console.is_terminal else Console(highlight=False, soft_wrap=True)


# Everything the driver prints during a sweep goes through this one console (the MLflow writer's lines
# too): while the live line is up, only its own console's prints are placed above it.
sweep_console = _sweep_console()


@dataclass(frozen=True)
class Tally:
    done: int
    failed: int
    running: int
    pending: int  # waiting for resources, paused, or not created yet by the searcher
    epochs_left: int  # trial-epochs still to train if no trial ends before training.epochs


def epochs_of(result: dict | None) -> int:
    result = result or {}
    return int(result.get("epoch", result.get("training_iteration", 0)))


def tally(trials, num_samples: int, epochs: int, ended: dict[str, bool] | None = None) -> Tally:
    """Where the sweep stands, from Tune's trials. A trial that ended (ASHA stopped it, it reached
    training.stop_at_val_recall, it failed) owes nothing more, so what ASHA cut is off the budget.
    `ended`: trial id -> failed, for trials Tune reported ended before it changed their status."""
    ended = dict(ended or {})
    ended.update({trial.trial_id: trial.status == FAILED for trial in trials if trial.status in ENDED})
    running = [trial for trial in trials if trial.trial_id not in ended and trial.status == RUNNING]
    waiting = [trial for trial in trials if trial.trial_id not in ended and trial.status != RUNNING]
    unborn = max(num_samples - len(trials), 0)
    owed = sum(max(epochs - epochs_of(trial.last_result), 0) for trial in running + waiting)
    return Tally(done=len(ended), failed=sum(ended.values()), running=len(running), pending=len(waiting) + unborn,
                 epochs_left=owed + unborn * epochs)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Plain:
    """Lines for logs and pipes: no colour, no cursor movement, no wrapping at 80 columns."""

    def __init__(self, file):
        self.file = file

    def line(self, text: Text) -> None:
        self.file.write(text.plain + "\n")
        self.file.flush()

    def close(self) -> None:
        pass


class _Live:
    """A terminal: the status redraws in place under the trial lines printed above it."""

    def __init__(self, console: Console, render):
        self.console = console
        # Redirecting stdout and stderr puts every other print (the MLflow writer's, Ctrl-C's) above the line.
        self.live = Live(console=console, get_renderable=render, refresh_per_second=2, transient=False)
        self.live.start()

    def line(self, text: Text) -> None:
        self.console.print(text)

    def close(self) -> None:
        self.live.stop()


class SweepProgress(Callback):
    """A Tune callback in the sweep's driver beside the MLflow writer; it only prints.

    Re-created rather than restored: a resumed sweep gets its callbacks back from Tune's pickled
    experiment state, and unpickling a SweepProgress yields the one run_sweep made for this driver
    (this --verbose, this terminal, this start time); see __reduce__."""

    _live: dict[str, SweepProgress] = {}  # sweep name -> the progress of that sweep in this driver

    def __init__(self, name: str, num_samples: int, epochs: int, time_budget_s: float | None = None,
                 verbose: bool = False, console: Console | None = None, clock=time.monotonic,
                 best_by: str = VAL_EXACT_RECALL):
        self.name, self.num_samples, self.epochs, self.time_budget_s = name, num_samples, epochs, time_budget_s
        self.best_by = best_by  # the val metric of the sweep's eval.objective: what "best" means on the line
        self.verbose, self.console, self.clock = verbose, console or sweep_console, clock
        self.started = clock()
        self.last_status = self.started
        self._epochs_trained = 0  # by this driver, since its first trial started: the rate of time_left
        self._training_since: float | None = None
        self._best: tuple[float, str, int] | None = None  # best_by's value, trial id, epoch
        self._ended: dict[str, bool] = {}  # trial id -> failed: Tune calls the hooks before it sets the status
        self._tally = Tally(0, 0, 0, num_samples, num_samples * epochs)
        self._output = None
        SweepProgress._live[name] = self

    def __reduce__(self):
        return _restored, (self.name, self.num_samples, self.epochs, self.time_budget_s, self.verbose, self.best_by)

    @property
    def interactive(self) -> bool:
        return self.console.is_interactive and self.console.file.isatty()

    def open(self):
        """The output, started on first use (on a terminal, the live line appears then)."""
        if self._output is None:
            self._output = _Live(self.console, self.render) if self.interactive else _Plain(self.console.file)
        return self._output

    def close(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None

    # -- the numbers ------------------------------------------------------------------------------

    def _note(self, trial_id: str, result: dict | None) -> None:
        recall = (result or {}).get(self.best_by)
        if recall is not None and (self._best is None or recall > self._best[0]):
            self._best = (recall, trial_id, epochs_of(result))

    def _update(self, trials) -> None:
        for trial in trials:  # a resumed sweep's earlier results count towards the best too
            self._note(trial.trial_id, trial.last_result)
        self._tally = tally(trials, self.num_samples, self.epochs, self._ended)

    def time_left(self, now: float) -> float | None:
        """Seconds left, or None before the first epoch: the trial-epochs still owed (Tally.epochs_left)
        at the rate this driver has trained them, trial-epochs per second of wall time since its first
        trial started (trials running side by side count as they ran; Ray's start does not, each trial's
        model loading does). An upper bound while ASHA may still stop trials early, so high at first;
        never past sweep.time_budget_s."""
        training = now - self._training_since if self._training_since is not None else 0.0
        left = self._tally.epochs_left * training / self._epochs_trained if self._epochs_trained else None
        if self.time_budget_s is not None:
            budget = max(self.started + self.time_budget_s - now, 0.0)
            left = budget if left is None else min(left, budget)
        return left

    def status(self) -> str:
        now, counts = self.clock(), self._tally
        failed = f" ({counts.failed} failed)" if counts.failed else ""
        best = (f"best {self.best_by} {self._best[0]:.3f} (trial {self._best[1]}, epoch {self._best[2]})"
                if self._best else f"best {self.best_by} -")
        left = self.time_left(now)
        return (f"{counts.done}/{self.num_samples} trials done{failed}, {counts.running} running, "
                f"{counts.pending} pending | {best} | {duration(now - self.started)} elapsed, "
                f"{'~' + duration(left) if left is not None else '?'} left")

    def render(self) -> Table:
        row = Table.grid(padding=(0, 1))
        row.add_column(no_wrap=True)
        row.add_column(no_wrap=True, overflow="ellipsis")
        row.add_row(ProgressBar(total=self.num_samples, completed=self._tally.done, width=20, complete_style="cyan",
                                finished_style="green"),
                    Text(self.status(), style="bold"))
        return row

    def _print_status(self) -> None:
        self.last_status = self.clock()
        if not self.interactive:  # the live line shows it already
            self.open().line(Text(self.status()))

    # -- Tune's hooks -----------------------------------------------------------------------------

    def setup(self, **info):
        self.open()  # a terminal's live line appears as Tune's loop starts, not at the first result

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._training_since is None:
            self._training_since = self.clock()

    def on_step_end(self, iteration, trials, **info):
        self._update(trials)
        if self.clock() - self.last_status >= STATUS_EVERY_S:
            self._print_status()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._epochs_trained += 1
        self._note(trial.trial_id, result)
        self._update(trials)
        if self.verbose:  # the format tests and people grep for: "  trial ID epoch N: ..."
            recall, loss = result.get(VAL_EXACT_RECALL), result.get("loss", 0)
            scored = (f"{VAL_EXACT_RECALL} {recall:.3f}" if recall is not None  # else not scored: eval.recall_every
                      else f"val_answer_loss {result.get('val_answer_loss', 0):.3f}")
            self.open().line(Text(f"  trial {trial.trial_id} epoch {epochs_of(result)}: loss {loss:.3f}  {scored}"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended[trial.trial_id] = False
        self._update(trials)
        self._print_status()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended[trial.trial_id] = True
        self._update(trials)
        self._print_status()

    def on_experiment_end(self, trials, **info):
        self._update(trials)
        self.close()


def _restored(name: str, num_samples: int, epochs: int, time_budget_s: float | None, verbose: bool,
              best_by: str = VAL_EXACT_RECALL) -> SweepProgress:
    """The progress run_sweep made for this sweep in this driver; a fresh one where there is none."""
    return SweepProgress._live.get(name) or SweepProgress(name, num_samples, epochs, time_budget_s, verbose,
                                                          best_by=best_by)
