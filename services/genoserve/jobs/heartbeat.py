"""A background thread that renews a shard's (or merge's) lease while it runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from genoserve.jobs.kinds.base import ShardCancelled

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Calls ``beat`` every ``interval`` s; ``beat`` returns False once the work should stop."""

    def __init__(self, beat: Callable[[], bool], interval: float, what: str) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{what}")
        self._beat = beat
        self._interval = interval
        self._halt = threading.Event()
        self._lost = threading.Event()
        self.what = what
        self.reason = ""

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            try:
                alive = self._beat()
            except Exception as exc:  # store unreachable: keep working, the lease may still hold
                log.warning("%s: heartbeat failed: %s", self.what, exc)
                continue
            if not alive:
                self.reason = "the job is no longer running (cancelled, failed, or the lease was lost)"
                self._lost.set()
                return

    def check(self) -> None:
        """Raise ShardCancelled if the last heartbeat said to stop."""
        if self._lost.is_set():
            raise ShardCancelled(self.reason)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
