"""What several chaos scenarios do: run the sweep CLI as its own process, wait for a trial's epoch on its
console, find the Ray worker of the trial it is training, cut a file short."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import psutil

from sweep_support import DEMO


def sweep_command(orchestrator, name: str, overrides: list[str], *extra: str) -> list[str]:
    # --verbose: a line per trial epoch ("  trial ID epoch N: ..."), which the scenarios wait for
    return orchestrator("sweep", str(DEMO), "--name", name, "--verbose",
                        *[arg for override in overrides for arg in ("--set", override)], *extra)


def start_driver(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The driver in its own session (it and the local Ray it starts can be killed as one), output to `log`."""
    with open(log, "w") as output:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)


def started_trials(log: Path) -> list[str]:
    """The trial ids of the sweep's console, in the order the trials started ("trial ID started: ...").
    Ray's trial ids carry no index, so with one trial at a time this order is the one of the points."""
    return re.findall(r"^trial (\S+) started:", log.read_text(), re.MULTILINE)


def wait_for_epoch(log: Path, driver: subprocess.Popen, nth: int, epoch: int, seconds: float = 300) -> str:
    """Wait until the `nth` trial to start (0 first) has reported `epoch`; its trial id."""
    deadline = time.monotonic() + seconds
    while True:
        trials = started_trials(log)
        if len(trials) > nth and f"  trial {trials[nth]} epoch {epoch}:" in log.read_text():
            return trials[nth]
        assert driver.poll() is None, f"the sweep ended before trial #{nth}'s epoch {epoch}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no epoch {epoch} of trial #{nth} within {seconds:.0f} s:\n" \
                                            f"{log.read_text()[-3000:]}"
        time.sleep(0.2)


def trial_workers(driver: subprocess.Popen) -> list[psutil.Process]:
    """The Ray worker processes below `driver` that run a Tune trial (Ray titles them ray::ImplicitFunc...)."""
    workers = []
    for process in psutil.Process(driver.pid).children(recursive=True):
        try:
            if "ray::ImplicitFunc" in " ".join(process.cmdline()):
                workers.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return workers


def truncate(path: Path) -> None:
    """Keep the first half of `path`, as a copy or an upload cut off mid-file would."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
