"""Ray processes that a killed sweep driver left behind, found and stopped before the next local Ray starts.

A local Ray started by `ray.init` shares its driver's fate only in part: SIGKILL the driver and its GCS
and raylet go, but the dashboard and runtime-env agents stay, reparented to init, holding memory and
their session's files, and a `--resume` starts a second Ray beside them. They are found by the session
folder they keep open (Ray names it `session_<date>_<time>_<n>_<driver pid>`): a session whose GCS and
raylet are both gone serves nobody, so whatever still holds it open is left over.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import psutil

SESSION = re.compile(r"/session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+(?=/)")
# A session lives while either runs; they are the first processes Ray starts and the last to hold it.
CORE = ("raylet", "gcs_server")
# A session younger than this may be starting up (its agents can open files before the raylet shows).
SETTLED_S = 60.0


def _sessions_held(process: psutil.Process) -> set[str]:
    try:
        return {match.group(0) for file in process.open_files() if (match := SESSION.search(file.path))}
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return set()


def _rays_own(process: psutil.Process) -> bool:
    """A process Ray started (an agent or worker titled `ray::...`, or one of Ray's own scripts), never a
    driver: a Python process that ran ray.init and shut it down can still hold the session's log files
    (`python [-u] <ray>/.../script.py`: the script is among the first arguments)."""
    try:
        command = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return bool(command) and (command[0].startswith("ray::") or any(
        f"{os.sep}ray{os.sep}" in part and part.endswith(".py") for part in command[1:3]))


def leftovers(now: float | None = None) -> list[psutil.Process]:
    """Ray's own processes holding a Ray session whose raylet and GCS are gone, all settled."""
    now = time.time() if now is None else now
    user = psutil.Process().username()
    holders: dict[str, list[psutil.Process]] = {}
    alive: set[str] = set()
    for process in psutil.process_iter(["name", "username", "create_time"]):
        if process.info["username"] != user or process.pid == os.getpid():
            continue
        # Reading open files is the costly part of this scan (on every local sweep's start): only Ray's
        # processes are read, the core ones (which keep a session alive) and those that could be stopped.
        core = process.info["name"] in CORE
        if not core and not _rays_own(process):
            continue
        for session in _sessions_held(process):
            if core:
                alive.add(session)
            else:
                holders.setdefault(session, []).append(process)
    return [process for session, processes in holders.items() if session not in alive
            and all(now - p.info["create_time"] > SETTLED_S for p in processes) for process in processes]


def stop_leftovers(log: Callable[[str], None]) -> int:
    """Kill the left-over processes (they hold no state worth a graceful exit) and say so in one line."""
    found = leftovers()
    if not found:
        return 0
    names = sorted({process.info["name"] for process in found})
    for process in found:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(found, timeout=10)
    log(f"stopped {len(found)} Ray processes that a killed sweep left behind ({', '.join(names)}; "
        f"pids {' '.join(str(process.pid) for process in found)})")
    return len(found)
