"""Shared memory for a client on the server's machine: request tensors go to /dev/shm, not the channel.

``Client(address, shared_memory=True)`` keeps a pool of POSIX shared-memory objects (named
``genoserve-<pid>-<random>``). For each request, a ``Lease`` takes free objects from the pool,
copies the request's large arrays into them (once) and hands the server their names and offsets
(``Tensor.shared_memory``); after the response the objects go back to the pool, so the server's
mappings of them stay valid and the next request costs no new mapping. The pool's objects are
removed when the client closes (and, if the process dies first, by Python's resource tracker).
Closing waits for a write in progress on another thread (a stream's sender placing the next
batch when the call failed); writes after it fail instead of touching removed memory.
The server must run with ``server.shared_memory`` on the same machine (or in a container that
shares its /dev/shm); its responses come back on the channel as usual.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from typing import Any

import numpy as np

from genoserve.api.shared_memory import PREFIX, SHM_DIR
from genoserve.v1 import tensor_pb2

Array = np.ndarray[Any, Any]

#: Objects are created at least this large (and in multiples of it), so a pool settles quickly.
CHUNK = 1 << 20
#: Each placed tensor starts at a multiple of this (cache lines, SIMD loads).
ALIGN = 64


@dataclass
class _Object:
    """One POSIX shared-memory object of the pool (/dev/shm/<name>), mapped for writing. Writes
    and removal hold its lock, so the pool's close waits for a write in progress on another thread
    (a stream's sender placing the next batch when the call failed) and later writes fail."""

    name: str
    size: int
    mapping: mmap.mmap | None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, name: str, size: int) -> _Object:
        path = SHM_DIR / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)  # MAP_SHARED, read and write
        except OSError:
            os.unlink(path)
            raise
        finally:
            os.close(fd)  # the mapping stays
        # As multiprocessing.shared_memory does: unlinked by the tracker if this process dies first.
        resource_tracker.register(f"/{name}", "shared_memory")
        return cls(name, size, mapping)

    def write(self, part: Array, offset: int) -> None:
        """Copy the 1-D uint8 ``part`` to ``offset``."""
        with self.lock:
            if self.mapping is None:
                raise RuntimeError("the client's shared memory is closed")
            np.frombuffer(self.mapping, dtype=np.uint8)[offset : offset + part.size] = part

    def remove(self) -> None:
        with self.lock:
            if self.mapping is not None:
                self.mapping.close()  # no view of it outlives a write
                self.mapping = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHM_DIR / self.name)
        resource_tracker.unregister(f"/{self.name}", "shared_memory")


class SharedMemoryPool:
    """The shared-memory objects of one client, reused from request to request (thread-safe)."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self._free: list[_Object] = []
        self._all: list[_Object] = []
        self._lock = threading.Lock()
        self._closed = False

    def lease(self) -> Lease:
        """Objects for one request (``with pool.lease() as lease: ...``), returned at its end."""
        return Lease(self)

    def _take(self, nbytes: int) -> _Object:
        with self._lock:
            if self._closed:
                raise RuntimeError("the client's shared memory is closed")
            fitting = [s for s in self._free if s.size >= nbytes]
            if fitting:
                chosen = min(fitting, key=lambda s: s.size)
                self._free.remove(chosen)
                return chosen
            size = -(-max(nbytes, 1) // CHUNK) * CHUNK
            created = _Object.create(f"{self.prefix}-{os.getpid()}-{secrets.token_hex(6)}", size)
            self._all.append(created)
            return created

    def _give_back(self, objects: Sequence[_Object]) -> None:
        with self._lock:
            if self._closed:
                return
            self._free.extend(objects)

    @property
    def names(self) -> list[str]:
        """Names of every object the pool holds (for tests and diagnostics)."""
        with self._lock:
            return [s.name for s in self._all]

    def close(self) -> None:
        """Remove every object. A request still in flight on another thread fails or, if the
        server has already read its tensors, completes; none can leave an object behind."""
        with self._lock:
            self._closed = True
            objects, self._all, self._free = self._all, [], []
        for s in objects:
            s.remove()


class Lease:
    """Space in the pool's objects for one request's tensors (a ``genoserve.api.codecs.tensor.Placer``)."""

    def __init__(self, pool: SharedMemoryPool) -> None:
        self.pool = pool
        self._held: list[_Object] = []
        self._used: list[int] = []

    def place(self, parts: Sequence[Array]) -> tensor_pb2.SharedMemoryRegion:
        """Copy the C-contiguous arrays ``parts`` one after another into shared memory; where they start."""
        flat = [np.ascontiguousarray(p).reshape(-1).view(np.uint8) for p in parts]
        nbytes = sum(p.size for p in flat)
        index = next((i for i, s in enumerate(self._held) if self._used[i] + nbytes <= s.size), None)
        if index is None:
            self._held.append(self.pool._take(nbytes))
            self._used.append(0)
            index = len(self._held) - 1
        target, offset = self._held[index], self._used[index]
        position = offset
        for part in flat:
            target.write(part, position)
            position += part.size
        self._used[index] = -(-position // ALIGN) * ALIGN
        return tensor_pb2.SharedMemoryRegion(name=target.name, offset=offset)

    def release(self) -> None:
        held, self._held, self._used = self._held, [], []
        self.pool._give_back(held)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
