"""Tensors a co-located client left in POSIX shared memory (``Tensor.shared_memory``), read in place.

A client on the server's machine writes a large tensor (pileups, a count matrix) into a
shared-memory object and sends only its name and offset; the server maps the object read-only
and decodes a view of it, so the bytes cross neither the gRPC channel nor a copy (as Triton's
system shared memory does). Off unless the server is started with ``server.shared_memory``.

Only objects named ``genoserve*`` are opened, and only regular files owned by the server's own
user are read: the name is opened without following a symbolic link (``O_NOFOLLOW``) and without
waiting (``O_NONBLOCK``: a FIFO would otherwise hold the event loop until someone wrote to it), and
the open descriptor is checked with ``fstat``. Anything else (a FIFO, a directory, a device, a
link to another file, another user's object) is INVALID_ARGUMENT naming ``...shared_memory.name``,
with nothing said about its size or contents. Mappings are kept (a few dozen, least recently used
dropped) while the object's identity (device, inode, size) stays the same, so a client that
reuses its objects costs one ``lstat`` + ``open`` + ``fstat`` per tensor and no page faults after the first
request. A mapping lives as long as any array still views it. The client must not shrink an
object while a request that names it is in flight (reading past the end of a shrunk object
would be a bus error); changing its bytes meanwhile changes the request, as it would in Triton
(codecs copy what native code indexes with, e.g. CSR structure, before checking it).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path

from genoserve.core import metrics
from genoserve.core.errors import InvalidArgument
from genoserve.v1 import tensor_pb2

#: Names a client may give (the server opens nothing else).
PREFIX = "genoserve"
#: Where Linux keeps POSIX shared-memory objects.
SHM_DIR = Path("/dev/shm")
#: open(2) flags: read-only, no symbolic link followed, never waiting (FIFOs), not inherited.
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _not_allowed(field: str, name: str) -> InvalidArgument:
    """The one answer for every object the server will not read: nothing about what it is."""
    return InvalidArgument.field(
        f"{field}.name", f"must name a regular shared-memory object owned by the server's user; {name!r} is not one"
    )


class SharedMemoryReader:
    """Maps the shared-memory objects requests name and hands out read-only views of them."""

    def __init__(self, directory: Path = SHM_DIR, cache_size: int = 64, owner: int | None = None) -> None:
        """``owner``: the uid whose objects may be read (None: the server's effective uid)."""
        self.directory = directory
        self.cache_size = cache_size
        self.owner = os.geteuid() if owner is None else owner
        self._maps: OrderedDict[str, tuple[tuple[int, int, int], mmap.mmap]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, region: tensor_pb2.SharedMemoryRegion, nbytes: int, field: str) -> memoryview:
        """``nbytes`` bytes at ``region.offset`` of object ``region.name`` (a read-only view).
        InvalidArgument names ``field`` when the name is not allowed, the object does not exist
        here, is not a regular file owned by ``owner``, or the bytes are not all inside it. Never
        blocks (a regular file on tmpfs opens at once; nothing else is waited for)."""
        name = region.name
        if not name.startswith(PREFIX) or "/" in name or name in (".", "..") or "\0" in name:
            raise InvalidArgument.field(f"{field}.name", f"must start with {PREFIX!r} and contain no '/', got {name!r}")
        path = self.directory / name
        try:
            # Special files are not even opened (opening a device can act); the fstat below decides.
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise _not_allowed(field, name)
            fd = os.open(path, OPEN_FLAGS)
        except FileNotFoundError:
            raise InvalidArgument.field(
                f"{field}.name",
                f"no shared-memory object {name!r} on the server's machine (shared memory works only "
                "for clients on the same machine, or containers sharing /dev/shm)",
            ) from None
        except OSError as exc:  # ELOOP: a symbolic link (swapped in since the lstat); ENXIO: a socket
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise _not_allowed(field, name) from None
            raise InvalidArgument.field(
                f"{field}.name", f"cannot open shared-memory object {name!r}: {exc.strerror}"
            ) from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != self.owner:
                raise _not_allowed(field, name)
            end = region.offset + nbytes
            if end > info.st_size:
                raise InvalidArgument.field(
                    f"{field}.offset",
                    f"the tensor's {nbytes} bytes at offset {region.offset} end at {end}, past the end of "
                    f"{name!r} ({info.st_size} bytes)",
                )
            if nbytes == 0:
                return memoryview(b"")
            mapped = self._mapping(name, fd, (info.st_dev, info.st_ino, info.st_size))
        finally:
            os.close(fd)
        metrics.SHARED_MEMORY_BYTES.inc(nbytes)
        return memoryview(mapped)[region.offset : end]

    def _mapping(self, name: str, fd: int, identity: tuple[int, int, int]) -> mmap.mmap:
        with self._lock:
            cached = self._maps.get(name)
            if cached is not None and cached[0] == identity:
                self._maps.move_to_end(name)
                return cached[1]
            # Dropped mappings are unmapped by the garbage collector once no array views them.
            mapped = mmap.mmap(fd, identity[2], mmap.MAP_SHARED, mmap.PROT_READ)
            self._maps[name] = (identity, mapped)
            self._maps.move_to_end(name)
            while len(self._maps) > self.cache_size:
                self._maps.popitem(last=False)
            return mapped
