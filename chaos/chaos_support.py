"""What several chaos scenarios do: run the sweep CLI as its own process, wait for a line of its
console, find the Ray worker of the trial it is training, cut a file short."""

from __future__ import annotations

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


def wait_for_line(log: Path, text: str, driver: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        assert driver.poll() is None, f"the sweep ended before {text!r}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {seconds:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


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
