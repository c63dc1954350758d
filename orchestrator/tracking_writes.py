"""The sweep driver's MLflow writes, made in order by one background thread.

Why a thread: Tune calls its callbacks from its one loop, which also starts trials and takes their
results. A write to a tracking server that went away waits in MLflow's client retries (a refused
connection is retried with backoff for minutes, MLFLOW_HTTP_REQUEST_MAX_RETRIES) and held that loop:
with the server stopped for 40 s, no epoch ran for 64 s. Here a callback only queues its writes.
One thread makes them, oldest first, so a trial's run exists before its metrics are logged and its
writes land in the order they were made. While the server is away the writes wait in memory
(each holds what it needs: metrics, a checkpoint's place in Ray's storage), the thread asks again
every RETRY_S seconds, and the driver prints one line as the server goes and one as it is back.

Why ask /health before each write: a write sent to an away server would sit in MLflow's retries before
it failed and said anything; check_reachable has no retries and a 5 s timeout, and costs one local
request per write, a few per trial-epoch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from orchestrator.errors import SweepError
from orchestrator.progress import sweep_console as console  # under the live progress line
from orchestrator.server import check_reachable

RETRY_S = 5.0


class WriteQueue:
    """Writes to one tracking store, made by a background thread in the order they were put.

    A write that fails while the server answers /health is a real error (a bad value, a store that
    refuses it): the thread stops there, and the driver raises it at its next put, drain or close."""

    def __init__(self, uri: str):
        self.uri = uri
        self._writes: deque[Callable[[], object]] = deque()
        self._changed = threading.Condition()  # a write queued or made, the server gone, or stop asked
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: Exception | None = None
        self.away = False  # the server did not answer the last try
        self._away_since: float | None = None  # time.monotonic() of the outage being reported
        self._back_after = 0.0  # how long it lasted, once the server answers again
        self._owed = 0  # writes to make, once back, before the back line: those that waited
        self._sent = 0  # writes made since the server came back

    @property
    def waiting(self) -> int:
        return len(self._writes)

    def put(self, *writes: Callable[[], object]) -> None:
        self._raise_error()
        with self._changed:
            self._writes.extend(writes)
            self._changed.notify_all()
        if self._thread is None:
            # A daemon: a driver that gives up on an away server must not hang on exit; drain and close
            # decide how long to wait.
            self._thread = threading.Thread(target=self._run, name="mlflow-writes", daemon=True)
            self._thread.start()

    def drain(self, wait_s: float) -> int:
        """Wait until every write is made, at most `wait_s` seconds from now while the server is away;
        how many are left (none unless it stayed away)."""
        deadline = time.monotonic() + wait_s
        told = False
        with self._changed:
            while self._writes and self._error is None and not (self.away and time.monotonic() >= deadline):
                if self.away and not told:
                    told = True
                    console.print(f"the trials are done; waiting up to {wait_s:.0f}s (sweep.tracking_outage_wait_s) "
                                  f"for tracking server {self.uri}: {self.waiting} writes waiting", markup=False)
                self._changed.wait(timeout=1.0)
        self._raise_error()
        return self.waiting

    def close(self) -> int:
        """Make what waits while the server answers, then stop the thread; how many writes are left."""
        self.drain(0)
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:  # at most one /health request away from seeing the stop
            self._thread.join(timeout=RETRY_S + 1)
        return self.waiting

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._writes or self._stopping)
                if self._stopping:
                    return
                write = self._writes[0]
            if not self._made(write):
                with self._changed:  # wait, then try the same write again: the ones after it keep their place
                    self._changed.wait_for(lambda: self._stopping, timeout=RETRY_S)
                continue
            self._count_sent()  # before the write leaves the queue: a drain that sees it empty comes after the line
            with self._changed:
                self._writes.popleft()
                self._changed.notify_all()

    def _made(self, write: Callable[[], object]) -> bool:
        """Make one write: False when it was not made, because the server is away (it waits) or it failed
        while the server answers (the thread stops)."""
        if not self._answers():
            self._went_away()
            return False
        if self.away:
            self._came_back()
        try:
            write()
        except Exception as error:
            if self._answers():
                with self._changed:
                    self._error, self._stopping = error, True
                    self._changed.notify_all()
            else:
                self._went_away()
            return False
        return True

    def _answers(self) -> bool:
        try:
            check_reachable(self.uri)
        except SweepError:
            return False
        return True

    def _went_away(self) -> None:
        self.away = True
        if self._away_since is None:  # one line per outage, however often the server comes and goes in it
            self._away_since = time.monotonic()
            console.print(f"tracking server {self.uri} unreachable since {time.strftime('%H:%M:%S')}: "
                          f"{self.waiting} writes waiting; training goes on", style="bold yellow", markup=False)
        with self._changed:
            self._changed.notify_all()  # a drain waiting for the last writes gives up in time

    def _came_back(self) -> None:
        self.away = False
        self._back_after = time.monotonic() - self._away_since
        self._owed = self._sent + self.waiting

    def _count_sent(self) -> None:
        if self._away_since is None:
            return
        self._sent += 1
        if self._sent >= self._owed:
            console.print(f"tracking server {self.uri} back after {self._back_after:.0f}s: "
                          f"{self._sent} writes sent", markup=False)
            self._away_since, self._owed, self._sent = None, 0, 0
