"""A real ``genoserve serve`` process on a free loopback port, for integration tests and benchmarks."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


#: Reconnect quickly while a server is starting (gRPC's default backoff grows to seconds).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, outside the kernel's ephemeral range and not handed out before.

    A port the kernel picks for ``bind(0)`` lies in the ephemeral range, where the outgoing
    connections of every client in the test run (gRPC, Redis, HTTP) also take their local ports:
    between this call and the server's own bind, one of them could take it ("Address already in
    use"). Ports below the range are never given to outgoing connections.
    """
    low, _ = _ephemeral_range()
    start, stop = (10000, low) if low > 12000 else (61000, 65536)
    candidates = list(range(start, stop))
    random.shuffle(candidates)
    for port in candidates:
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {start}-{stop - 1}")


class ServerProcess:
    """Starts ``genoserve serve`` with ``args`` and waits until health answers ``expect``."""

    def __init__(
        self,
        *args: str,
        model_dir: str | Path | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = [
            sys.executable, "-m", "genoserve.cli.main", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", str(self.metrics_port),
            "--model-dir", str(model_dir or REPO / "models"), *args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, timeout: float = 60.0, channel: grpc.Channel | None = None) -> ServerProcess:
        if self.proc is not None and self.proc.poll() is None:
            # A second process on the same port (gRPC binds with SO_REUSEPORT) would share the
            # calls and outlive terminate(), which stops only the newer one.
            raise RuntimeError(f"the server on {self.address} is already running (pid {self.proc.pid})")
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        if wait:
            self.wait_serving(timeout, channel)
        return self

    def wait_serving(self, timeout: float = 60.0, channel: grpc.Channel | None = None) -> None:
        """Poll grpc.health.v1 until the whole server is SERVING (or the process dies)."""
        own = channel is None
        channel = channel or grpc.insecure_channel(self.address, options=FAST_RECONNECT)
        stub = health_pb2_grpc.HealthStub(channel)
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
            raise TimeoutError(f"server not SERVING after {timeout}s: {self.log()}")
        finally:
            if own:
                channel.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path and self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def __enter__(self) -> ServerProcess:
        """Starts the server unless ``start()`` already did (``with server.start(): ...``)."""
        return self if self.proc is not None and self.proc.poll() is None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def scrape(server: ServerProcess) -> str:
    """The server's /metrics text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``, in /metrics ``text``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
