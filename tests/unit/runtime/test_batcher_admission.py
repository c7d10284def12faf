"""Admission by deadline: the batcher refuses at once (RESOURCE_EXHAUSTED) a request that the work
queued ahead of it cannot let finish before its deadline, and serves one it can; the estimate of
session-call time it rests on (``CallCost``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import numpy as np
import pytest

from genoserve.core.errors import DeadlineExceeded, ResourceExhausted
from genoserve.runtime.admission import CallCost
from genoserve.runtime.batcher import BatcherConfig, DynamicBatcher

Array = np.ndarray[Any, Any]


class Slow:
    """y = 2x + 1 that takes ``seconds`` per call (a model on a busy device), gated if ``gate``."""

    def __init__(self, seconds: float, gate: threading.Event | None = None) -> None:
        self.seconds = seconds
        self.gate = gate
        self.calls: list[Array] = []
        self.started = threading.Event()

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = np.array(inputs["x"])
        self.calls.append(x)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(self.seconds)
        return {"y": 2 * x + 1}


def rows(start: int, n: int = 1) -> dict[str, Array]:
    return {"x": np.arange(start, start + n, dtype=np.float32)[:, None]}


Make = Callable[..., DynamicBatcher]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[DynamicBatcher] = []

    def factory(run: Any, **config: Any) -> DynamicBatcher:
        batcher = DynamicBatcher("test", run, BatcherConfig(**{"max_queue_delay_us": 0, **config}))
        batcher.start()
        made.append(batcher)
        return batcher

    yield factory
    for b in made:
        await b.close(timeout=10)


async def test_a_request_the_queued_work_would_make_miss_its_deadline_is_refused_at_once(make: Make) -> None:
    run = Slow(0.1)
    batcher = make(run, max_batch_size=1)
    await batcher.submit(rows(0))  # one timed call: 0.1 s a row
    queued = [asyncio.ensure_future(batcher.submit(rows(10 + i))) for i in range(10)]  # ~1 s of work
    await asyncio.sleep(0.02)
    started = time.monotonic()
    with pytest.raises(ResourceExhausted) as caught:
        await batcher.submit(rows(500), deadline=time.monotonic() + 0.3)
    assert time.monotonic() - started < 0.2  # refused at once, not when the 0.3 s deadline passed
    message = str(caught.value)
    assert "overloaded" in message
    assert "estimated" in message
    assert "deadline is 0.3" in message
    served = await batcher.submit(rows(600), deadline=time.monotonic() + 8)  # ~1.1 s of work ahead: in time
    np.testing.assert_array_equal(served["y"], 2 * rows(600)["x"] + 1)
    assert [float(r["y"][0, 0]) for r in await asyncio.gather(*queued)] == [2 * (10 + i) + 1 for i in range(10)]
    assert all(500 not in c for c in run.calls), "the refused request reached the model"


@pytest.mark.parametrize(("headroom", "refused"), [(0.5, True), (0.0, False)])
async def test_the_headroom_keeps_part_of_the_time_left_for_what_follows_the_model(
    make: Make, headroom: float, refused: bool
) -> None:
    """~1.1 s of work ahead and its own with 1.8 s left: served with no headroom, refused when
    half the time left is kept for the work after the model."""
    batcher = make(Slow(0.1), max_batch_size=1, deadline_headroom=headroom)
    await batcher.submit(rows(0))
    queued = [asyncio.ensure_future(batcher.submit(rows(10 + i))) for i in range(10)]
    await asyncio.sleep(0.02)
    request = batcher.submit(rows(500), deadline=time.monotonic() + 1.8)
    if refused:
        with pytest.raises(ResourceExhausted, match="50% of it is what the model may take"):
            await request
    else:
        assert float((await request)["y"][0, 0]) == 1001
    await asyncio.gather(*queued)


async def test_admit_tells_before_any_preprocessing_whether_a_request_would_be_refused(make: Make) -> None:
    batcher = make(Slow(0.1), max_batch_size=1)
    await batcher.submit(rows(0))
    queued = [asyncio.ensure_future(batcher.submit(rows(10 + i))) for i in range(10)]
    await asyncio.sleep(0.02)
    depth = batcher.queue_depth
    with pytest.raises(ResourceExhausted, match="overloaded"):
        batcher.admit(1, time.monotonic() + 0.3)
    batcher.admit(1, time.monotonic() + 8)  # time enough: no error
    batcher.admit(1, None)  # no deadline: only the queue bound applies, at submit
    assert batcher.queue_depth == depth  # nothing was queued
    await asyncio.gather(*queued)


async def test_the_estimate_counts_batches_of_rows_shared_among_instances(make: Make) -> None:
    """Two instances, 0.1 s a call of up to 4 rows: 16 one-row requests queued are ~0.2 s of wait
    (four calls on two instances), not 16 x 0.1 s; a request with 0.6 s left is served in time."""
    run = Slow(0.1)
    batcher = make(run, max_batch_size=4, instances=2)
    await batcher.submit(rows(0, 4))
    queued = [asyncio.ensure_future(batcher.submit(rows(10 + i))) for i in range(16)]
    await asyncio.sleep(0.02)
    with pytest.raises(ResourceExhausted):  # its own call alone takes longer than 0.02 s
        await batcher.submit(rows(1000), deadline=time.monotonic() + 0.02)
    started = time.monotonic()
    served = await batcher.submit(rows(900), deadline=started + 0.6)
    assert time.monotonic() - started < 0.6
    assert float(served["y"][0, 0]) == 1801
    await asyncio.gather(*queued)


async def test_the_estimate_follows_the_pace_the_queue_drains_at_not_only_the_session_calls(make: Make) -> None:
    """Session calls of 10 ms, but each caller then spends 30 ms on the event loop with its result
    (encoding a response) before the next batch can start: 20 queued requests take ~0.8 s, not
    0.2 s, and a request with 0.6 s left is refused rather than accepted to miss its deadline."""
    batcher = make(Slow(0.01), max_batch_size=1)

    async def caller(i: int) -> None:
        await batcher.submit(rows(i))
        time.sleep(0.03)  # noqa: ASYNC251 -- the point: work on the event loop between calls

    await asyncio.gather(*(caller(i) for i in range(6)))  # timed, with a queue behind each call
    queued = [asyncio.ensure_future(caller(10 + i)) for i in range(20)]
    await asyncio.sleep(0)
    assert batcher.estimated_wait() > 0.5
    with pytest.raises(ResourceExhausted):
        await batcher.submit(rows(500), deadline=time.monotonic() + 0.6)
    await asyncio.gather(*queued)


async def test_nothing_is_refused_by_estimate_before_a_call_was_timed(make: Make) -> None:
    """No timing yet: the request is accepted, and dropped uncomputed when its deadline passes
    in the queue (DEADLINE_EXCEEDED, as without admission)."""
    gate = threading.Event()
    run = Slow(0.0, gate)
    batcher = make(run, max_batch_size=1)
    busy = asyncio.ensure_future(batcher.submit(rows(0)))
    assert await asyncio.to_thread(run.started.wait, 5)
    queued = [asyncio.ensure_future(batcher.submit(rows(10 + i))) for i in range(5)]
    doomed = asyncio.ensure_future(batcher.submit(rows(500), deadline=time.monotonic() + 0.1))
    await asyncio.sleep(0.3)
    gate.set()
    with pytest.raises(DeadlineExceeded):
        await doomed
    await asyncio.gather(busy, *queued)


async def test_a_request_finding_the_queue_empty_is_never_refused(make: Make) -> None:
    """Its deadline is shorter than its own call, but nothing waits ahead: the server is not
    overloaded, so it runs (deadlines only drop requests before compute)."""
    run = Slow(0.2)
    batcher = make(run, max_batch_size=4)
    await batcher.submit(rows(0))
    result = await batcher.submit(rows(7), deadline=time.monotonic() + 0.05)
    assert float(result["y"][0, 0]) == 15


async def test_with_admission_off_the_request_is_queued_and_misses_its_deadline(make: Make) -> None:
    run = Slow(0.1)
    batcher = make(run, max_batch_size=1, deadline_admission=False)
    await batcher.submit(rows(0))
    queued = [asyncio.ensure_future(batcher.submit(rows(10 + i))) for i in range(10)]
    await asyncio.sleep(0.02)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(rows(500), deadline=time.monotonic() + 0.3)
    await asyncio.gather(*queued)


async def test_requests_without_a_deadline_are_bounded_by_the_queue_size_only(make: Make) -> None:
    run = Slow(0.05)
    batcher = make(run, max_batch_size=1, max_queue_size=8)
    await batcher.submit(rows(0))
    results = await asyncio.gather(*(batcher.submit(rows(i)) for i in range(8)))
    assert len(results) == 8
    queued = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(8)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="queue full"):
        await batcher.submit(rows(99))
    await asyncio.gather(*queued)


# -- the cost estimate ------------------------------------------------------------------------------


def test_call_cost_fits_overhead_and_per_row_cost_from_calls_of_mixed_sizes() -> None:
    cost = CallCost()
    assert not cost.measured
    for n in [1, 64, 8, 32, 1, 64, 16, 4] * 5:
        cost.observe(n, 0.002 + 0.0005 * n)
    assert cost.overhead == pytest.approx(0.002, rel=1e-6)
    assert cost.per_row == pytest.approx(0.0005, rel=1e-6)
    assert cost.seconds(640, calls=10) == pytest.approx(10 * 0.002 + 640 * 0.0005)


def test_call_cost_of_same_size_calls_is_proportional_to_rows() -> None:
    cost = CallCost()
    for _ in range(20):
        cost.observe(64, 0.064)
    assert cost.overhead == 0.0
    assert cost.seconds(128, calls=2) == pytest.approx(0.128)


def test_one_stalled_call_moves_the_estimate_a_little_and_a_lasting_slowdown_is_followed() -> None:
    cost = CallCost()
    for _ in range(20):
        cost.observe(10, 0.010)
    cost.observe(10, 5.0)  # a 500x stall
    assert cost.seconds(10) < 0.015
    for _ in range(30):
        cost.observe(10, 0.100)  # the device got 10x slower for good
    assert cost.seconds(10) == pytest.approx(0.100, rel=0.1)
