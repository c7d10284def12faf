"""Streams of independent requests, handled concurrently so that the batcher can group them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

R = TypeVar("R")
T = TypeVar("T")

#: Requests of one stream handled at once; the stream's reading waits when this many are running
#: (gRPC flow control then holds the client back).
IN_FLIGHT = 256

_DONE = object()


async def concurrently(
    requests: AsyncIterator[R], handle: Callable[[R], Awaitable[T]], limit: int = IN_FLIGHT
) -> AsyncIterator[T]:
    """Each request in its own task (the model version it takes is released when its answer is
    ready), up to ``limit`` at once; answers are yielded as they finish, not in request order.
    ``handle`` turns a request's own failure into an answer; an exception it lets through (or one
    reading the stream) ends the stream with it."""
    answers: asyncio.Queue[object] = asyncio.Queue()
    slots = asyncio.Semaphore(limit)
    running: set[asyncio.Task[None]] = set()

    async def run(request: R) -> None:
        try:
            answers.put_nowait(await handle(request))
        except BaseException as exc:
            answers.put_nowait(exc)
        finally:
            slots.release()

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(run(request))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running, return_exceptions=True)
            answers.put_nowait(_DONE)
        except BaseException as exc:
            answers.put_nowait(exc)

    reader = asyncio.create_task(read())
    try:
        while True:
            item = await answers.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()


#: Messages of one ordered stream handled at once (each may carry a whole batch).
IN_ORDER = 32


async def in_order(
    requests: AsyncIterator[R], handle: Callable[[int, R], Coroutine[Any, Any, T]], limit: int = IN_ORDER
) -> AsyncIterator[T]:
    """``handle(number, request)`` for each request in its own task, up to ``limit`` ahead of the
    answer being sent, so that the batcher can group the messages of one stream; answers are
    yielded in request order. The first failure in request order ends the stream with its error,
    after the answers before it (the requests after it are cancelled), as handling them one by
    one would."""
    queued: asyncio.Queue[object] = asyncio.Queue(limit)  # full: reading waits (flow control)

    async def read() -> None:
        try:
            number = 0
            async for request in requests:
                task = asyncio.create_task(handle(number, request))
                try:
                    await queued.put(task)
                except asyncio.CancelledError:  # the stream ended while the queue was full
                    task.cancel()
                    raise
                number += 1
            await queued.put(_DONE)
        except Exception as exc:  # reading the stream failed: after the answers before it
            await queued.put(exc)

    reader = asyncio.create_task(read())
    try:
        while True:
            item = await queued.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield await item  # type: ignore[misc]
    finally:
        reader.cancel()
        while not queued.empty():
            left = queued.get_nowait()
            if isinstance(left, asyncio.Task):
                left.cancel()  # also marks a failure it had as seen (asyncio does not log it)
