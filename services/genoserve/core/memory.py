"""glibc malloc tuning for processes that move large buffers (gRPC messages, dense batches).

With glibc's defaults, a freed block of several MiB goes back to the kernel (munmap, or a trim of
the heap top), and the next request's buffer of the same size is fresh memory: every 4 KiB page
of it faults on first touch (~1.5 us each here, so ~3 ms per 8 MiB copy). Keeping freed memory in
the heap for reuse removes those faults; the price is that the process holds up to ``keep_mb``
of freed memory. Parameters from glibc's malloc.h and mallopt(3).
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
#: glibc refuses larger mmap thresholds on 64-bit systems (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_MIB = 1024 * 1024


def tune_allocator(keep_mb: int = 512) -> bool:
    """Keep up to ``keep_mb`` MiB of freed memory for reuse, serve blocks up to 32 MiB from the
    heap and grow it 64 MiB at a time (or ``keep_mb``, if less). Process-wide; call it once at
    start-up. Returns False (and changes nothing) when ``keep_mb`` is 0 or the C library is not
    glibc."""
    if keep_mb <= 0 or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = (
        (_M_MMAP_THRESHOLD, min(MMAP_THRESHOLD_MAX, keep_mb * _MIB)),
        (_M_TRIM_THRESHOLD, keep_mb * _MIB),
        (_M_TOP_PAD, min(64, keep_mb) * _MIB),
    )
    applied = all(libc.mallopt(param, value) == 1 for param, value in settings)
    if not applied:
        log.warning("mallopt refused a setting; glibc's malloc defaults may partly apply")
    return applied
