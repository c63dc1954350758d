"""The Ray processes a SIGKILLed driver leaves behind (its agents) are found and stopped before the next
local Ray starts, and a live Ray is left alone. A real local Ray, started by a real driver process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from orchestrator import ray_leftovers

pytestmark = pytest.mark.e2e

# address="local", as orchestrator.sweep.connect_ray: Ray's default joins a cluster recorded on this machine (the
# cluster tests' `ray start`, running beside this file under `make test`), and this driver's Ray must be its own.
DRIVER = ("import ray, sys, time; ray.init(address='local', include_dashboard=False); print('up', flush=True); "
          "time.sleep(600)")


def _start_driver() -> subprocess.Popen:
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert driver.stdout.readline().strip() == "up"
    return driver


def _held(pid: int) -> list[psutil.Process]:
    """Every process holding the session folder of the Ray that driver `pid` started."""
    suffix = f"_{pid}"
    return [process for process in psutil.process_iter()
            if any(session.endswith(suffix) for session in ray_leftovers._sessions_held(process))]


def test_a_killed_drivers_agents_are_stopped_and_a_live_ray_is_left_alone(monkeypatch):
    live, killed = _start_driver(), _start_driver()
    try:
        os.kill(killed.pid, signal.SIGKILL)  # the driver alone, as `kill -9` or the OOM killer would
        killed.wait()
        deadline = time.time() + 30  # its GCS and raylet go with it; wait until they have
        while any(p.name() in ray_leftovers.CORE for p in _held(killed.pid)) and time.time() < deadline:
            time.sleep(0.5)
        left = _held(killed.pid)
        assert left, "nothing of the killed driver's Ray stayed: the scenario no longer happens"
        live_ray = _held(live.pid)
        assert any(p.name() in ray_leftovers.CORE for p in live_ray)

        monkeypatch.setattr(ray_leftovers, "SETTLED_S", 0.0)  # instead of waiting a minute
        lines: list[str] = []
        assert ray_leftovers.stop_leftovers(lines.append) == len(left)
        assert not _held(killed.pid)
        assert len(lines) == 1 and lines[0].startswith(f"stopped {len(left)} Ray processes that a killed sweep left")
        assert sorted(p.pid for p in _held(live.pid)) == sorted(p.pid for p in live_ray)  # untouched
    finally:
        for driver in (live, killed):
            if driver.poll() is None:
                driver.terminate()
                driver.wait()
