"""The client's gRPC deadline as an absolute ``time.monotonic()`` instant for the batcher."""

from __future__ import annotations

import time

import grpc


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:  # no deadline set
        return None
    return float(time.monotonic() + remaining)
