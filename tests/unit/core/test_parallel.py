"""Row ranges on the shared pool: every range runs, results land in place, errors in range order."""

from __future__ import annotations

import itertools
import os
import threading
import time

import numpy as np
import pytest

from genoserve.core import parallel


def test_bounds_cover_every_row_once() -> None:
    for n in (0, 1, 7, 4096):
        for parts in (1, 2, 3, 8):
            edges = parallel.bounds(n, parts)
            assert (edges[0], edges[-1], len(edges)) == (0, n, parts + 1)
            assert all(a <= b for a, b in itertools.pairwise(edges))


def test_parts_respect_the_minimum_rows_and_the_cores() -> None:
    assert parallel.parts_for(100, 512, limit=2) == 1
    assert parallel.parts_for(1024, 512, limit=2) == 2
    assert parallel.parts_for(100_000, 512, limit=2) == 2
    assert parallel.parts_for(100_000, 512) == min(parallel.usable_cores(), 100_000 // 512)


def test_every_range_runs_and_the_first_on_the_calling_thread() -> None:
    out = np.zeros(1000)
    callers: dict[int, int] = {}

    def work(lo: int, hi: int) -> None:
        out[lo:hi] += np.arange(lo, hi)
        callers[lo] = threading.get_ident()

    parallel.over_ranges(work, 1000, 3)
    np.testing.assert_array_equal(out, np.arange(1000))
    assert callers[0] == threading.get_ident()
    assert sorted(callers) == parallel.bounds(1000, 3)[:-1]


def test_the_first_failing_range_is_raised_after_all_finished() -> None:
    finished: list[int] = []
    gate = threading.Event()

    def work(lo: int, hi: int) -> None:
        if lo == 0:
            gate.wait(5)  # the later ranges fail first
            finished.append(lo)
            return
        gate.set()
        finished.append(lo)
        raise ValueError(f"range {lo}")

    with pytest.raises(ValueError, match="range 250"):
        parallel.over_ranges(work, 1000, 4)
    assert sorted(finished) == [0, 250, 500, 750]


def test_a_forked_child_gets_its_own_pool() -> None:
    """Prefork job workers: a pool made before the fork has no threads in the child."""
    parallel.over_ranges(lambda lo, hi: None, 10, 2)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child: ranges must still run (a hang here fails the wait below)
        out = np.zeros(10)

        def work(lo: int, hi: int) -> None:
            out[lo:hi] = 1

        parallel.over_ranges(work, 10, 2)
        os._exit(0 if out.all() else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the child's ranges never ran")
