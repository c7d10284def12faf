"""Graceful shutdown: on SIGTERM the server stops accepting, drains in-flight requests, exits 0.

Several large Infer calls are put in flight, then the server gets SIGTERM. Every one of them must
complete with its own correct outputs, new requests must be refused while the old ones drain, and
the process must exit 0 well within its grace period. Health watchers must see NOT_SERVING.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genoserve.client import Client
from genoserve.core.errors import Unavailable
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

MODEL = "platform-mlp"
GRACE_S = 10.0
#: The model's max_batch_size (models/platform-mlp/model.yaml): the batcher splits calls into
#: parts of this many rows, and ROWS is a multiple of it so that every queued part is full.
PART_ROWS = 256
#: Concurrent calls and rows per call (about 31 MB each): together two to four seconds of work on
#: a 2-core machine, so that SIGTERM lands while most of them are still being computed.
CALLS = 8
ROWS = 235 * PART_ROWS

Array = np.ndarray[Any, Any]


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess("--grace-period", str(GRACE_S), log_path=tmp_path / "server.log")
    try:
        yield proc.start()
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


def _metric(text: str, name: str) -> float:
    match = re.search(rf'^{name}\{{model="{MODEL}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _rows_in_batcher(server: ServerProcess) -> float:
    """Rows the batcher has computed or holds queued, from /metrics (the batch running now excluded)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return _metric(text, "genoserve_batch_size_sum") + PART_ROWS * _metric(text, "genoserve_queue_depth")


class InFlight(threading.Thread):
    """One client making one large Infer call; records its outcome and when it ended."""

    def __init__(self, address: str, x: Array) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.x = x
        self.calling = threading.Event()
        self.result: Array | None = None
        self.error: BaseException | None = None
        self.ended = 0.0

    def run(self) -> None:
        # max_attempts=1: a success must be the original call, not a retry after a refusal.
        with Client(self.address, timeout=60.0, max_attempts=1) as client:
            try:
                client.list_models()  # connected: the big call is all that is left
                self.calling.set()
                self.result = client.infer(MODEL, {"x": self.x})["y"]
            except BaseException as exc:
                self.error = exc
            finally:
                self.ended = time.monotonic()
                self.calling.set()


def _wait_for_log(server: ServerProcess, text: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < end, f"server did not log {text!r} in {timeout} s: {server.log()}"
        time.sleep(0.005)


def _assert_refused_soon(address: str, x: Array, timeout: float) -> None:
    """A new call gets UNAVAILABLE (which clients retry elsewhere) within ``timeout`` seconds.

    A call that the server accepted just before it stopped listening is answered normally; then
    try again. Anything else (CANCELLED, a deadline) is a failure.
    """
    end = time.monotonic() + timeout
    while True:
        with Client(address, timeout=10.0, max_attempts=1) as late:
            try:
                late.infer(MODEL, {"x": x})
            except Unavailable:
                return
        assert time.monotonic() < end, f"new calls still accepted {timeout} s after shutdown began"
        time.sleep(0.02)


def test_sigterm_drains_in_flight_requests(
    fresh_server: ServerProcess, platform_reference: ort.InferenceSession
) -> None:
    server = fresh_server
    assert server.proc is not None
    rng = np.random.default_rng(0)
    calls = [InFlight(server.address, rng.normal(size=(ROWS, 128)).astype(np.float32)) for _ in range(CALLS)]
    for call in calls:
        call.start()
    for call in calls:
        assert call.calling.wait(10.0)
    # In flight means in the server: wait until every call's rows have reached the batcher. (A call
    # whose request is still being uploaded is not yet in flight for gRPC; shutdown cancels it.)
    end = time.monotonic() + 30.0
    while _rows_in_batcher(server) + PART_ROWS < CALLS * ROWS:
        assert time.monotonic() < end, "the Infer calls did not all reach the server in 30 s"
        time.sleep(0.005)

    sigterm = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    in_flight = [call for call in calls if not call.ended]
    # The batcher runs parts first in, first out, so the first calls may finish early; most must not.
    assert len(in_flight) >= CALLS // 2, f"only {len(in_flight)} calls in flight at SIGTERM: make them larger"

    # New calls are refused while the old ones drain. Probe once the server has begun shutting
    # down: a call arriving in the millisecond it closes its port may be CANCELLED by gRPC instead.
    _wait_for_log(server, "shutting down", timeout=5.0)
    time.sleep(0.1)
    _assert_refused_soon(server.address, calls[0].x[:4], timeout=3.0)
    outcomes = [repr(call.error) if call.error else "ok" for call in calls if call.ended]
    assert not all(call.ended for call in calls), f"all calls over before new calls were refused: {outcomes}"

    # The process exits 0 once drained, well before the grace period would have cut the calls off.
    code = server.proc.wait(timeout=GRACE_S + 5.0)
    exited = time.monotonic()
    for call in calls:
        call.join(timeout=5.0)
    assert code == 0, server.log()
    assert exited - sigterm < GRACE_S, f"took {exited - sigterm:.1f} s to exit: {server.log()}"

    # Every call, above all those still in flight at SIGTERM, succeeded with its own correct outputs.
    errors = [repr(call.error) for call in calls if call.error is not None]
    assert not errors, f"calls failed during the drain: {errors}\n{server.log()}"
    for call in calls:
        assert call.result is not None
        assert call.result.shape == (ROWS, 16)
        (expected,) = platform_reference.run(["y"], {"x": call.x})
        np.testing.assert_allclose(call.result, expected, rtol=1e-4, atol=1e-5)

    # Once it is gone nothing answers on its port.
    with Client(server.address, timeout=2.0, max_attempts=1) as after, pytest.raises(Unavailable):
        after.list_models()


def test_health_watchers_see_not_serving_on_sigterm(fresh_server: ServerProcess) -> None:
    """A load balancer keeping a Health.Watch stream open is told NOT_SERVING as the drain begins."""
    server = fresh_server
    assert server.proc is not None
    with grpc.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30.0)
        try:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            sigterm = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            # The server ends the stream itself so that an open Watch does not hold the drain.
            with pytest.raises(StopIteration):
                next(watch)
            assert watch.code() == grpc.StatusCode.OK
        finally:
            watch.cancel()
    assert server.proc.wait(timeout=GRACE_S + 5.0) == 0, server.log()
    assert time.monotonic() - sigterm < GRACE_S / 2
