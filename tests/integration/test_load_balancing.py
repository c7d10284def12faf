"""Client-side round-robin: one client spreads its calls over every address its target resolves to.

In Kubernetes the target is a headless Service (one DNS record per pod); here an ``ipv4:`` target
lists two real servers on loopback, which gRPC resolves the same way.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from genoserve.client import Client
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration


def infer_count(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    found = re.findall(r"^genoserve_requests_total\{([^}]*)\} (\S+)$", text, flags=re.M)
    return sum(float(value) for labels, value in found if 'method="Infer"' in labels and 'code="OK"' in labels)


@pytest.fixture(scope="module")
def two_servers() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    first = ServerProcess("--family", "platform").start()
    second = ServerProcess("--family", "platform").start()
    yield first, second
    first.terminate()
    second.terminate()


def test_one_client_spreads_calls_over_every_server(two_servers: tuple[ServerProcess, ServerProcess]) -> None:
    first, second = two_servers
    x = np.zeros((2, 128), dtype=np.float32)
    with Client(f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}", timeout=30) as client:
        for _ in range(20):
            assert client.infer("platform-mlp", {"x": x})["y"].shape == (2, 16)
    counts = [infer_count(first.metrics_port), infer_count(second.metrics_port)]
    assert sum(counts) == 20
    assert min(counts) >= 5, f"calls were not spread: {counts}"
