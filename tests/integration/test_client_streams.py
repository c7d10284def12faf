"""The blocking client's stream calls stop reading their requests once the call is over (failed
on the server, or the caller stopped early) and wait for gRPC's reading thread to leave: left
running, that daemon thread can be frozen at exit holding the channel's lock, and the program
then hangs in the channel's finaliser instead of exiting (seen as ``genoserve predict variants``
printing the server's error and never exiting)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from genoserve.client import Client
from genoserve.client.client import embed_request
from genoserve.core.errors import GenoserveError
from genoserve.variants.examples import read_examples
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

GOLDEN = REPO / "tests" / "data" / "deepvariant" / "golden.calling_examples.tfrecord.gz"
SLOW_S = 1.0  # building each request after the first takes this long


class Source:
    """Requests made slowly, recording which threads read them and how many were made."""

    def __init__(self, make: Callable[[int], Any], count: int = 6) -> None:
        self.make, self.count = make, count
        self.made = 0
        self.readers: set[threading.Thread] = set()

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.count):
            self.readers.add(threading.current_thread())
            if i:
                time.sleep(SLOW_S)
            self.made += 1
            yield self.make(i)

    def assert_reading_stopped(self) -> None:
        assert self.readers, "gRPC never read the requests"
        alive = [t.name for t in self.readers if t.is_alive()]
        assert not alive, f"threads still reading the requests after the call: {alive}"
        assert self.made <= 3, f"{self.made} of {self.count} requests made after the call was over"


def _pileups(_: int) -> Any:
    return list(read_examples(GOLDEN))[:4]


def _cells(i: int) -> bytes:
    counts = np.ones((2, 3), np.float32)
    return embed_request("no-such-model" if i == 0 else "", ["A", "B", "C"] if i == 0 else [], counts)


FAILING: dict[str, Callable[[Client, Source], Iterator[Any]]] = {
    "predict_stream": lambda c, s: c.predict_stream("no-such-model", s),
    "call_variants_stream": lambda c, s: c.call_variants_stream(s, model="no-such-model"),
    "embed_stream": lambda c, s: c.embed_stream(s),
}
MAKERS: dict[str, Callable[[int], Any]] = {
    "predict_stream": lambda i: [(f"s{i}", "ACGT" * 25 + "A")],
    "call_variants_stream": _pileups,
    "embed_stream": _cells,
}


@pytest.mark.parametrize("method", sorted(FAILING))
def test_a_stream_the_server_fails_stops_reading_and_leaves_no_reading_thread(
    server: ServerProcess, method: str
) -> None:
    source = Source(MAKERS[method])
    with Client(server.address, timeout=30) as client:
        with pytest.raises(GenoserveError):
            for _ in FAILING[method](client, source):
                pass
        source.assert_reading_stopped()  # checked with the channel still open: the call did it
        assert client.health() == "SERVING"  # the channel still works


def test_a_caller_that_stops_early_cancels_the_stream_and_leaves_no_reading_thread(server: ServerProcess) -> None:
    source = Source(lambda i: [(f"s{i}", "ACGT" * 25 + "A")])
    with Client(server.address, timeout=30) as client:
        responses = client.predict_stream("pwm-ctcf", source)
        first = next(responses)
        assert len(first.results) == 1
        responses.close()  # as a `break` out of the loop does, once the generator is dropped
        source.assert_reading_stopped()
        # the channel is fine for the next call
        assert len(list(client.predict_stream("pwm-ctcf", [[("a", "ACGT" * 25 + "A")]]))) == 1
