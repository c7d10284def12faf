"""DynamicBatcher: batching under concurrency, delay, splitting, bounded queue, deadlines, isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from genoserve.core.errors import DeadlineExceeded, InternalError, ResourceExhausted, Unavailable
from genoserve.runtime.batcher import BatcherConfig, DynamicBatcher

Array = np.ndarray[Any, Any]


class Recorder:
    """A model function y = 2x + 1 that records each batch it was called with."""

    def __init__(self, gate: threading.Event | None = None, fail_on_nan: bool = False) -> None:
        self.batches: list[Array] = []
        self.gate = gate
        self.fail_on_nan = fail_on_nan
        self.started = threading.Event()

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = np.array(inputs["x"])
        self.batches.append(x)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail_on_nan and np.isnan(x).any():
            raise ValueError("NaN in batch")
        return {"y": 2 * x + 1, "first": x[:, :1].copy()}


def rows(start: int, n: int, width: int = 3) -> dict[str, Array]:
    """n distinct rows whose values identify the request (row i holds start + i)."""
    return {"x": np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None], width, axis=1)}


@pytest.fixture
async def make() -> Any:
    made: list[DynamicBatcher] = []

    def factory(run: Any, **config: Any) -> DynamicBatcher:
        batcher = DynamicBatcher("test", run, BatcherConfig(**config))
        batcher.start()
        made.append(batcher)
        return batcher

    yield factory
    for b in made:
        await b.close(timeout=1)


async def test_concurrent_requests_are_batched_and_outputs_unmixed(make: Any) -> None:
    run = Recorder()
    batcher = make(run, max_batch_size=16, max_queue_delay_us=20_000)
    requests = [rows(100 * i, 1 + i % 3) for i in range(60)]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], 2 * request["x"] + 1)
        np.testing.assert_array_equal(result["first"], request["x"][:, :1])
    sizes = [len(b) for b in run.batches]
    assert sum(sizes) == sum(len(r["x"]) for r in requests)
    assert max(sizes) <= 16
    assert len(run.batches) <= 12, f"120 items in {len(run.batches)} calls: requests were not batched"


async def test_lone_request_waits_max_queue_delay_then_runs(make: Any) -> None:
    batcher = make(Recorder(), max_batch_size=8, max_queue_delay_us=80_000)
    started = time.perf_counter()
    await batcher.submit(rows(0, 1))
    waited = time.perf_counter() - started
    assert 0.075 <= waited < 0.5


async def test_full_batch_runs_without_waiting_for_the_delay(make: Any) -> None:
    batcher = make(Recorder(), max_batch_size=8, max_queue_delay_us=2_000_000)
    started = time.perf_counter()
    await batcher.submit(rows(0, 8))
    assert time.perf_counter() - started < 0.5


async def test_without_delay_requests_queued_while_busy_form_one_batch(make: Any) -> None:
    """max_queue_delay_us 0 (the variants models): a lone request runs at once, and the requests
    that arrive while the session is busy still go in together."""
    gate = threading.Event()
    run = Recorder(gate)
    batcher = make(run, max_batch_size=64, max_queue_delay_us=0)
    first = asyncio.ensure_future(batcher.submit(rows(0, 5)))
    assert await asyncio.to_thread(run.started.wait, 5)
    queued = [asyncio.ensure_future(batcher.submit(rows(100 * i, 4))) for i in range(1, 6)]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(first, *queued)
    assert [len(b) for b in run.batches] == [5, 20]


async def test_oversize_request_is_split_and_reassembled_in_order(make: Any) -> None:
    run = Recorder()
    batcher = make(run, max_batch_size=16, max_queue_delay_us=0)
    request = rows(0, 70)
    result = await batcher.submit(request)
    np.testing.assert_array_equal(result["y"], 2 * request["x"] + 1)
    assert max(len(b) for b in run.batches) <= 16
    assert sum(len(b) for b in run.batches) == 70


async def test_full_queue_rejects_at_once(make: Any) -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = make(run, max_batch_size=1, max_queue_delay_us=0, max_queue_size=3)
    busy = asyncio.ensure_future(batcher.submit(rows(0, 1)))
    await asyncio.to_thread(run.started.wait, 5)  # the only instance is now busy
    waiting = [asyncio.ensure_future(batcher.submit(rows(10 + i, 1))) for i in range(3)]
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    with pytest.raises(ResourceExhausted, match="queue full"):
        await batcher.submit(rows(99, 1))
    assert time.perf_counter() - started < 0.05
    gate.set()
    for result, start in zip(await asyncio.gather(busy, *waiting), [0, 10, 11, 12], strict=True):
        assert result["y"][0, 0] == 2 * start + 1


async def test_expired_requests_are_dropped_before_compute(make: Any) -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = make(run, max_batch_size=4, max_queue_delay_us=0)
    busy = asyncio.ensure_future(batcher.submit(rows(0, 1)))
    await asyncio.to_thread(run.started.wait, 5)
    doomed = asyncio.ensure_future(batcher.submit(rows(555, 1), deadline=time.monotonic() + 0.05))
    alive = asyncio.ensure_future(batcher.submit(rows(7, 1), deadline=time.monotonic() + 30))
    await asyncio.sleep(0.15)
    gate.set()
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        await doomed
    assert (await alive)["y"][0, 0] == 15
    await busy
    assert all(555 not in b for b in run.batches), "an expired request reached the model"


async def test_deadline_already_passed_is_refused(make: Any) -> None:
    run = Recorder()
    batcher = make(run)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(rows(0, 1), deadline=time.monotonic() - 1)
    assert run.batches == []


async def test_failing_request_does_not_fail_its_neighbours(make: Any) -> None:
    run = Recorder(fail_on_nan=True)
    batcher = make(run, max_batch_size=64, max_queue_delay_us=50_000)
    good = [rows(10 * i, 2) for i in range(5)]
    bad = rows(1000, 2)
    bad["x"][1, 1] = np.nan
    results = await asyncio.gather(*(batcher.submit(r) for r in [*good[:2], bad, *good[2:]]), return_exceptions=True)
    assert isinstance(results[2], InternalError)
    for request, result in zip(good, [*results[:2], *results[3:]], strict=True):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["y"], 2 * request["x"] + 1)
    assert len(run.batches[0]) == 12, "the six requests should have been tried as one batch first"


async def test_requests_of_different_item_shapes_batch_separately(make: Any) -> None:
    run = Recorder()
    batcher = make(run, max_batch_size=32, max_queue_delay_us=20_000)
    narrow = [rows(i, 2, width=3) for i in range(4)]
    wide = [rows(i, 2, width=5) for i in range(4)]
    results = await asyncio.gather(*(batcher.submit(r) for r in [*narrow, *wide]))
    for request, result in zip([*narrow, *wide], results, strict=True):
        np.testing.assert_array_equal(result["y"], 2 * request["x"] + 1)
    assert {b.shape[1] for b in run.batches} == {3, 5}
    assert len(run.batches) == 2


async def test_cancelled_request_is_not_computed(make: Any) -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = make(run, max_batch_size=4, max_queue_delay_us=0)
    busy = asyncio.ensure_future(batcher.submit(rows(0, 1)))
    await asyncio.to_thread(run.started.wait, 5)
    gone = asyncio.ensure_future(batcher.submit(rows(777, 1)))
    await asyncio.sleep(0.01)
    gone.cancel()
    gate.set()
    await busy
    await asyncio.sleep(0.05)
    assert all(777 not in b for b in run.batches)


async def test_close_drains_queued_requests_then_refuses(make: Any) -> None:
    run = Recorder()
    batcher = make(run, max_batch_size=4, max_queue_delay_us=30_000)
    pending = [asyncio.ensure_future(batcher.submit(rows(i, 1))) for i in range(6)]
    await asyncio.sleep(0)
    await batcher.close(timeout=5)
    assert [p.result()["y"][0, 0] for p in pending] == [2 * i + 1 for i in range(6)]
    with pytest.raises(Unavailable):
        await batcher.submit(rows(0, 1))


async def test_instances_bound_concurrent_calls(make: Any) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def run(inputs: Mapping[str, Array]) -> dict[str, Array]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1
        return {"y": np.array(inputs["x"])}

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        batcher = DynamicBatcher("test", run, BatcherConfig(max_batch_size=1, max_queue_delay_us=0, instances=2), pool)
        batcher.start()
        await asyncio.gather(*(batcher.submit(rows(i, 1)) for i in range(10)))
        await batcher.close(1)
    assert peak == 2


class Overlap:
    """y = 2x + 1, recording each call's rows and how many calls ran at once at most."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = np.array(inputs["x"])
        with self.lock:
            self.sizes.append(len(x))
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.seconds)
        with self.lock:
            self.active -= 1
        if np.isnan(x).any():
            raise ValueError("NaN in batch")
        return {"y": 2 * x + 1}


def split_batcher(run: Overlap, instances: int, split_rows: int) -> DynamicBatcher:
    """On the event loop's default executor (at least five threads)."""
    config = BatcherConfig(max_batch_size=64, max_queue_delay_us=0, instances=instances, split_rows=split_rows)
    return DynamicBatcher("test", run, config)


@pytest.mark.parametrize(
    ("instances", "split_rows", "size", "sizes"),
    [
        (2, 8, 20, [10, 10]),  # split in two halves, run at once
        (3, 4, 13, [4, 4, 5]),
        (4, 8, 20, [10, 10]),  # parts of at least split_rows: two, though four instances are idle
        (2, 8, 15, [15]),  # too small to make two parts of 8
        (2, 0, 20, [20]),  # split_rows 0: never
        (1, 8, 20, [20]),  # no other instance
    ],
)
async def test_lone_batch_is_split_across_idle_instances(instances: int, split_rows: int, size: int,
                                                         sizes: list[int]) -> None:  # fmt: skip
    run = Overlap()
    batcher = split_batcher(run, instances, split_rows)
    batcher.start()
    request = rows(100, size)
    result = await batcher.submit(request)
    await batcher.close(1)
    np.testing.assert_array_equal(result["y"], 2 * request["x"] + 1)  # parts back in row order
    assert sorted(run.sizes) == sorted(sizes)
    assert run.peak == len(sizes), "the parts should run at once"


async def test_split_never_holds_back_a_queued_request() -> None:
    """Two requests queued together run side by side, each whole, rather than one split in two."""
    run = Overlap()
    batcher = split_batcher(run, 2, 4)
    batcher.start()
    first, second = rows(0, 64), rows(1000, 64)  # each a full batch
    results = await asyncio.gather(batcher.submit(first), batcher.submit(second))
    await batcher.close(1)
    for request, result in zip((first, second), results, strict=True):
        np.testing.assert_array_equal(result["y"], 2 * request["x"] + 1)
    assert run.sizes == [64, 64]
    assert run.peak == 2


async def test_split_batch_with_a_failing_part_fails_only_its_bad_request() -> None:
    run = Overlap(seconds=0.01)
    batcher = split_batcher(run, 2, 4)
    batcher.start()
    bad = rows(0, 16)
    bad["x"][12, 0] = np.nan  # in the second part
    with pytest.raises(InternalError):
        await batcher.submit(bad)
    good = rows(50, 16)
    result = await batcher.submit(good)  # both instances were given back
    await batcher.close(1)
    np.testing.assert_array_equal(result["y"], 2 * good["x"] + 1)
    assert run.sizes[:2] == [8, 8]
    assert run.sizes[-2:] == [8, 8]


class Threads:
    """y = 2x + 1, recording the thread of each call; sleeps ``seconds`` per call."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.threads: list[int] = []

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        self.threads.append(threading.get_ident())
        if self.seconds:
            time.sleep(self.seconds)
        return {"y": 2 * np.asarray(inputs["x"]) + 1}


async def test_short_calls_run_on_the_event_loop_after_the_first(make: Any) -> None:
    """A call timed below inline_call_us runs on the loop's own thread (no hop to the executor);
    the first, untimed, call goes to the executor, and the outputs are the same either way."""
    run = Threads()
    batcher = make(run, max_batch_size=8, max_queue_delay_us=0, inline_call_us=50_000)
    for i in range(3):
        result = await batcher.submit(rows(10 * i, 2))
        np.testing.assert_array_equal(result["y"], 2 * rows(10 * i, 2)["x"] + 1)
    loop_thread = threading.get_ident()
    assert run.threads[0] != loop_thread
    assert run.threads[1:] == [loop_thread, loop_thread]


@pytest.mark.parametrize(
    ("seconds", "config"),
    [(0.02, {"inline_call_us": 2000}), (0.0, {"inline_call_us": 0}), (0.0, {"inline_call_us": 50_000, "instances": 2})],
    ids=["slower-than-the-limit", "inline-off", "several-instances"],
)
async def test_calls_stay_in_the_executor(make: Any, seconds: float, config: dict[str, Any]) -> None:
    run = Threads(seconds)
    batcher = make(run, max_batch_size=8, max_queue_delay_us=0, **config)
    for i in range(3):
        await batcher.submit(rows(i, 1))
    assert threading.get_ident() not in run.threads
