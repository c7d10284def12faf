"""Streams of independent requests, handled concurrently so that the batcher can group them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

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
