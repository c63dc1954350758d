"""Ctrl-C and SIGTERM of a sweep's driver: stop the trials cleanly, keep what can be resumed.

Ray Tune stops an experiment gracefully on SIGINT (and SIGUSR1): the loop ends, every trial is
stopped, the experiment state is saved for `--resume` and the callbacks' `on_experiment_end`
runs. But it returns as if the sweep had ended, so the caller cannot tell an interrupted sweep
from a finished one, and SIGTERM (`kill`, `ray job stop`, a scheduler's time limit) kills the
driver outright, leaving every MLflow run RUNNING. So the sweep takes both signals itself: it
records which arrived and asks Tune for its graceful stop through SIGUSR1. A second signal stops
at once (KeyboardInterrupt), as Tune's own handler would.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading

from orchestrator.errors import SweepError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Tune's own SIGINT handler would swallow the first Ctrl-C before ours sees it.
os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"


class SweepInterrupted(SweepError):
    """The driver was stopped by a signal; the sweep can be resumed."""

    def __init__(self, name: str, signum: int, experiment_path: str, resume: str):
        self.signum = signum
        super().__init__(f"sweep '{name}' stopped by {signal.Signals(signum).name}: its trials were stopped and saved "
                         f"in {experiment_path}; continue it with:\n  {resume}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def resume_command(source: str, name: str, overrides=(), start: str | None = None, address: str | None = None) -> str:
    """The command that continues sweep `name`: the one that started it (config path and --set as
    given, so it runs from the same directory), with its --name and --resume."""
    words = ["orchestrator", "sweep", source, "--name", name]
    for override in overrides:
        words += ["--set", override]
    if start:
        words += ["--from", start]
    if address:
        words += ["--address", address]
    return shlex.join([*words, "--resume"])


class GracefulStop:
    """`with GracefulStop() as stop:` around the sweep; `stop.signum` is the signal that stopped it."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
            # Tune installs its SIGUSR1 handler when its loop starts (one left by an earlier sweep in
            # this process would stop nothing): until then, a signal stops at once.
            self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if first and signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            print(f"\n{signal.Signals(signum).name}: stopping the trials and saving the sweep for --resume "
                  "(again to stop at once)", flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        raise KeyboardInterrupt
