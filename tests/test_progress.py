"""The sweep's terminal progress (orchestrator/progress.py), fed fake Tune trials and a fake clock: the
counts, the best val recall so far, the time-left estimate, plain lines off a terminal, a live line on
one, and how a resumed sweep gets this driver's progress back from Tune's pickled callbacks."""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

from rich.console import Console

from orchestrator.progress import STATUS_EVERY_S, SweepProgress, duration, tally


def trial(trial_id: str, status: str, epoch: int | None = None, recall: float | None = None):
    result = {"epoch": epoch, "val_exact_recall": recall, "loss": 1.25} if epoch is not None else {}
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=result, config={})


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain_progress(verbose: bool = False, time_budget_s: float | None = None, name: str = "night"):
    out, clock = io.StringIO(), Clock()
    progress = SweepProgress(name, num_samples=4, epochs=10, time_budget_s=time_budget_s, verbose=verbose,
                             console=Console(file=out, width=80), clock=clock)
    return progress, out, clock


def report(progress, trials, *results):
    """Tune's calls for each (trial, epoch, val recall) result."""
    for item, epoch, recall in results:
        item.last_result = {"epoch": epoch, "val_exact_recall": recall, "loss": 1.25}
        progress.on_trial_result(0, trials, item, item.last_result)


def test_tally_counts_what_asha_stopped_as_done_and_owing_nothing():
    trials = [trial("a", "TERMINATED", 4, 0.5), trial("b", "RUNNING", 6, 0.6), trial("c", "PENDING"),
              trial("d", "ERROR", 1, 0.0)]
    counts = tally(trials, num_samples=6, epochs=10)
    # a stopped at 4 of 10 epochs and d failed: nothing more; b owes 4, c 10, the 2 not yet created 10 each.
    assert (counts.done, counts.failed, counts.running, counts.pending) == (2, 1, 1, 3)
    assert counts.epochs_left == 4 + 10 + 2 * 10


def test_status_line_numbers_best_so_far_and_time_left():
    progress, out, clock = plain_progress()
    a, b, c = trial("a", "RUNNING"), trial("b", "RUNNING"), trial("c", "PENDING")
    trials = [a, b, c]
    assert progress.status().endswith("best val_exact_recall - | 0s elapsed, ? left")
    clock.now += 20  # Ray starts: not part of the training rate
    progress.on_trial_start(0, trials, a)
    progress.on_trial_start(0, trials, b)
    clock.now += 100
    # 10 trial-epochs in 100 s of wall time (two trials side by side); a peaked at epoch 3, then fell.
    report(progress, trials, (a, 1, 0.1), (b, 1, 0.0), (a, 2, 0.4), (b, 2, 0.2), (a, 3, 0.7), (b, 3, 0.3),
           (a, 4, 0.5), (b, 4, 0.45), (b, 5, 0.5), (b, 6, 0.6))
    a.status = "TERMINATED"  # ASHA stopped it at epoch 4
    progress.on_step_end(0, trials)
    # Left: b owes 4, c 10, the trial not yet created 10 = 24 trial-epochs at 0.1 per second.
    assert progress.status() == ("1/4 trials done, 1 running, 2 pending | best val_exact_recall 0.700 (trial a, "
                                 "epoch 3) | 2m00s elapsed, ~4m00s left")


def test_time_left_never_passes_the_time_budget():
    progress, _, clock = plain_progress(time_budget_s=150)
    assert progress.time_left(clock()) == 150  # before any epoch: the budget is all there is to go on
    a = trial("a", "RUNNING")
    progress.on_trial_start(0, [a], a)
    clock.now += 100
    report(progress, [a], *[(a, epoch, 0.1) for epoch in range(1, 6)])
    assert progress.time_left(clock()) == 50  # the estimate (1000 s) is past the budget's end


def test_a_trial_reported_ended_counts_as_done_before_tune_sets_its_status():
    progress, out, _ = plain_progress()
    a, b = trial("a", "RUNNING", 10, 0.9), trial("b", "RUNNING", 2, 0.0)
    progress.on_trial_complete(0, [a, b], a)  # Tune calls it while a's status is still RUNNING
    progress.on_trial_error(0, [a, b], b)
    assert progress.status().startswith("2/4 trials done (1 failed), 0 running, 2 pending")
    assert out.getvalue().count("trials done") == 2  # a plain status line at each trial's end


def test_off_a_terminal_lines_are_plain_and_epochs_only_verbose():
    for verbose in (False, True):
        progress, out, clock = plain_progress(verbose=verbose)
        progress.setup()
        a = trial("a", "RUNNING")
        progress.on_trial_start(0, [a], a)
        report(progress, [a], (a, 1, 0.25))
        clock.now += STATUS_EVERY_S
        progress.on_step_end(0, [a])  # a status line once a minute
        progress.on_experiment_end([a])
        lines = out.getvalue().splitlines()
        assert "\x1b" not in out.getvalue()
        epoch_lines = ["  trial a epoch 1: loss 1.250  val_exact_recall 0.250"] if verbose else []
        assert lines == [*epoch_lines, "0/4 trials done, 1 running, 3 pending | best val_exact_recall 0.250 "
                                       "(trial a, epoch 1) | 1m00s elapsed, ~39m00s left"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_status_is_one_live_line():
    out = Terminal()
    console = Console(file=out, force_terminal=True, force_interactive=True, width=200)
    progress = SweepProgress("live", num_samples=2, epochs=3, verbose=True, console=console)
    progress.setup()
    a = trial("a", "RUNNING")
    report(progress, [a], (a, 1, 0.5))
    progress.on_trial_complete(0, [a], a)
    progress.on_experiment_end([a])
    text = out.getvalue()
    assert "trial a epoch 1:" in text and "1/2 trials done" in text and "\x1b[" in text
    assert text.count("trial a epoch 1:") == 1  # printed once, above the line that redraws


def test_a_resumed_sweep_gets_this_driver_s_progress_back_from_tune_s_state():
    progress, _, _ = plain_progress(verbose=True, name="resumable")
    assert pickle.loads(pickle.dumps(progress)) is progress  # what Tune.restore unpickles
    saved = pickle.dumps(progress)
    SweepProgress._live.pop("resumable")  # another driver, which made none: one from the saved settings
    restored = pickle.loads(saved)
    assert restored is not progress and (restored.name, restored.num_samples, restored.epochs, restored.verbose) == (
        "resumable", 4, 10, True)


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (7, 100, 3599, 3725)] == ["7s", "1m40s", "59m59s", "1h02m"]


def test_the_best_on_the_line_is_by_the_sweeps_objective():
    """A sweep by ROUGE-L says which trial is best by ROUGE-L, not by an exact recall it does not optimise."""
    progress = SweepProgress("rouge", 2, 4, best_by="val_rouge_l_recall", console=Console(file=io.StringIO()),
                             clock=lambda: 0.0)
    progress._note("a", {"epoch": 1, "val_exact_recall": 0.5, "val_rouge_l_recall": 0.6})
    progress._note("b", {"epoch": 1, "val_exact_recall": 0.0, "val_rouge_l_recall": 0.9})
    assert "best val_rouge_l_recall 0.900 (trial b, epoch 1)" in progress.status()
    state = pickle.dumps(progress)
    SweepProgress._live.pop("rouge")  # another driver resuming the sweep: a fresh progress, by the same metric
    assert pickle.loads(state).best_by == "val_rouge_l_recall"
