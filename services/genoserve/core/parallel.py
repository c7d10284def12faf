"""Row-range work split over the process's usable cores (numpy and scipy release the GIL).

One shared thread pool per process, sized to the CPU budget (``genoserve.core.cpus``): a request's
preparation can use both cores of a 2-core pod while the session of the request before it waits
for its turn. Work below ``min_rows`` per part stays on the calling thread.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from genoserve.core.cpus import cpu_budget

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


@functools.cache
def usable_cores() -> int:
    """``cpu_budget().usable``, read once per process (it reads cgroup files)."""
    return cpu_budget().usable


def _shared_pool() -> ThreadPoolExecutor:
    """The process's pool; a forked child (prefork job workers) makes its own, since the parent's
    threads do not survive the fork."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max(1, usable_cores() - 1), thread_name_prefix="split")
            _pool_pid = os.getpid()
        return _pool


def bounds(n: int, parts: int) -> list[int]:
    """``parts + 1`` increasing offsets from 0 to ``n`` splitting [0, n) into near-equal ranges."""
    return [n * k // parts for k in range(parts + 1)]


def parts_for(n: int, min_rows: int, limit: int | None = None) -> int:
    """How many parts ``n`` rows make: at most the usable cores (or ``limit``), each ``min_rows`` or more."""
    cap = usable_cores() if limit is None else limit
    return max(1, min(cap, n // max(1, min_rows)))


def over_ranges(work: Callable[[int, int], None], n: int, parts: int) -> None:
    """Run ``work(lo, hi)`` for each of ``parts`` ranges of [0, n): the first on this thread, the
    others on the shared pool. Every range finishes before this returns; then the exception of the
    first failed range (in range order, so messages do not depend on timing) is raised."""
    if parts <= 1:
        work(0, n)
        return
    edges = bounds(n, parts)
    pool = _shared_pool()
    futures: list[Future[None]] = [pool.submit(work, edges[k], edges[k + 1]) for k in range(1, parts)]
    first: BaseException | None = None
    try:
        work(edges[0], edges[1])
    except BaseException as exc:  # re-raised below, after the other ranges are done with the buffers
        first = exc
    errors = [first, *(f.exception() for f in futures)]
    for error in errors:
        if error is not None:
            raise error
