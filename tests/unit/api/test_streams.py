"""Streams of independent requests: handled at once so the batcher can group them, answered in
request order (``in_order``) or as they finish (``concurrently``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import pytest

from genoserve.api.streams import concurrently, in_order


async def numbers(count: int, fail_at: int | None = None) -> AsyncIterator[int]:
    for n in range(count):
        if n == fail_at:
            raise ValueError(f"cannot read message {n}")
        yield n


async def collect(stream: AsyncIterator[int], into: list[int]) -> None:
    async for answer in stream:
        into.append(answer)


class Gate:
    """Holds every handler until ``count`` of them are running at the same time."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.running = 0
        self.open = asyncio.Event()
        self.cancelled: list[int] = []

    async def handle(self, number: int, request: int) -> int:
        self.running += 1
        if self.running == self.count:
            self.open.set()
        try:
            await asyncio.wait_for(self.open.wait(), timeout=5)
            await asyncio.sleep(0.001 * (self.count - number))  # later requests finish first
        except asyncio.CancelledError:
            self.cancelled.append(number)
            raise
        return request * 10


async def test_in_order_handles_requests_at_once_and_answers_in_request_order() -> None:
    gate = Gate(8)
    answers = [a async for a in in_order(numbers(8), gate.handle, limit=8)]
    assert answers == [n * 10 for n in range(8)]  # would time out had they run one by one


async def test_in_order_sends_the_answers_before_a_failure_then_its_error() -> None:
    async def handle(number: int, request: int) -> int:
        await asyncio.sleep(0.001 * (5 - number))
        if number == 2:
            raise ValueError("request 2 is bad")
        return request

    received: list[int] = []
    with pytest.raises(ValueError, match="request 2 is bad"):
        await collect(in_order(numbers(6), handle), received)
    assert received == [0, 1]


async def test_in_order_ends_with_a_reading_error_after_the_answers_before_it() -> None:
    async def handle(number: int, request: int) -> int:
        return request

    received: list[int] = []
    with pytest.raises(ValueError, match="cannot read message 3"):
        await collect(in_order(numbers(6, fail_at=3), handle), received)
    assert received == [0, 1, 2]


async def test_in_order_cancels_what_is_still_running_when_the_stream_ends() -> None:
    cancelled: list[int] = []

    async def handle(number: int, request: int) -> int:
        if number == 0:
            return request
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(number)
            raise
        return request

    stream = cast(AsyncGenerator[int, None], in_order(numbers(4), handle, limit=4))
    assert await anext(stream) == 0
    await asyncio.sleep(0.01)  # the others are running
    await stream.aclose()  # the client went away
    await asyncio.sleep(0.01)
    assert sorted(cancelled) == [1, 2, 3]


async def test_in_order_reads_no_further_than_its_limit_ahead() -> None:
    read = 0

    async def requests() -> AsyncIterator[int]:
        nonlocal read
        for n in range(100):
            read += 1
            yield n

    release = asyncio.Event()

    async def handle(number: int, request: int) -> int:
        await release.wait()
        return request

    stream = cast(AsyncGenerator[int, None], in_order(requests(), handle, limit=4))
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    assert read <= 4 + 2  # the queue's 4, the one being answered, the one waiting to be queued
    release.set()
    assert await waiting == 0
    await stream.aclose()


async def test_concurrently_answers_as_requests_finish() -> None:
    gate = Gate(8)
    answers = [a async for a in concurrently(numbers(8), lambda r: gate.handle(r, r), limit=8)]
    assert sorted(answers) == [n * 10 for n in range(8)]
    assert answers != sorted(answers)  # later requests finished first


async def test_in_order_leaves_no_task_behind_when_the_client_goes_away() -> None:
    """A client that disconnects while the stream's reading waits on a full queue: every task of
    the stream ends (a task left waiting would hold its requests for the server's lifetime)."""

    async def handle(number: int, request: int) -> int:
        await asyncio.sleep(60)
        return request

    before = asyncio.all_tasks()
    stream = cast(AsyncGenerator[int, None], in_order(numbers(100), handle, limit=2))
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)  # two queued, one being answered, the reading waits to queue more
    waiting.cancel()  # the RPC is cancelled
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await stream.aclose()
    await asyncio.sleep(0.05)
    assert asyncio.all_tasks() - before == set()


async def test_concurrently_leaves_no_task_behind_when_the_client_goes_away() -> None:
    async def handle(request: int) -> int:
        await asyncio.sleep(60)
        return request

    before = asyncio.all_tasks()
    stream = cast(AsyncGenerator[int, None], concurrently(numbers(100), handle, limit=4))
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)  # four running, the reading waits for a slot
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await stream.aclose()
    await asyncio.sleep(0.05)
    assert asyncio.all_tasks() - before == set()
