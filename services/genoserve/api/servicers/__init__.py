"""Thin servicers: proto -> codec -> family/runtime -> codec -> proto."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


async def as_own_request(work: Coroutine[Any, Any, _T]) -> _T:
    """Run one message of a stream as its own task: the model version it takes
    (``LiveModels.get``) is released when that message is answered, so unloading a version
    waits for the message, not for the whole stream."""
    return await asyncio.create_task(work)
