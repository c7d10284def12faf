"""The request side of a blocking client's stream call.

grpcio reads a stream's request iterator on a daemon thread of its own and leaves it running when
the call ends early (an error from the server, the caller stopping): it goes on building the next
request, then takes the channel's lock to send it. A daemon thread is frozen where it stands when
the interpreter exits; frozen holding that lock, it leaves the channel's finaliser waiting on it
for ever, and the program never exits (grpc/grpc#20026 and #36927 describe this class of hang).
``RequestFeed`` stops the reading when the call is over and waits for that thread to leave.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

#: How long ``close`` waits for the reading thread to finish the request it is building.
CLOSE_WAIT_S = 60.0


class RequestFeed(Generic[T]):
    """An iterator over ``items`` for gRPC to read; ``close()`` (when the call is over) ends it
    and waits up to ``wait_s`` for the thread reading it to leave."""

    def __init__(self, items: Iterable[T], wait_s: float = CLOSE_WAIT_S) -> None:
        self._items = iter(items)
        self._closed = threading.Event()
        self._readers: set[threading.Thread] = set()
        self._wait_s = wait_s

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        self._readers.add(threading.current_thread())
        if self._closed.is_set():  # the call is over: nothing more is read
            raise StopIteration
        return next(self._items)

    def close(self) -> None:
        self._closed.set()
        me = threading.current_thread()
        for reader in self._readers - {me}:
            reader.join(self._wait_s)
