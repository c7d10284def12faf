"""VariantCalling against hostile requests on a real server: a 50,000-alt example is refused at once
(INVALID_ARGUMENT naming the field and the limit, from the server's settings) without the server
growing or stalling, and broken tf.Examples are each their own INVALID_ARGUMENT while the other
examples of the request are answered."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from genoserve.api.codecs.variants import pileup_example
from genoserve.client import Client
from genoserve.v1 import variants_pb2, variants_pb2_grpc
from genoserve.variants.examples import PileupExample, read_examples, to_variant
from tests.support.server import ServerProcess
from tests.support.tf_examples import tf_example as _tf
from tests.support.tf_examples import with_shape as _shape
from tests.support.variants_models import write_fraction_model

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "deepvariant" / "golden.calling_examples.tfrecord.gz"
LIMIT = 4  # the server's variants.max_alts_per_site here (default 32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("variants-hardening")
    models = root / "models"
    write_fraction_model(models, "fraction-7ch", 7)
    config = root / "genoserve.yaml"
    config.write_text(
        yaml.safe_dump({
            "runtime": {"model_dir": str(models)},
            "jobs": {"data_dir": str(root / "data")},
            "variants": {"max_alts_per_site": LIMIT},
        })
    )  # fmt: skip
    process = ServerProcess("--config", str(config), model_dir=models, log_path=root / "server.log").start()
    yield process
    assert process.terminate() == 0, process.log()


@pytest.fixture(scope="module")
def golden() -> list[PileupExample]:
    return list(read_examples(GOLDEN))


def _peak_rss_mib(server: ServerProcess) -> float:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_a_50000_alt_example_is_refused_at_once_and_the_server_stays_well(
    server: ServerProcess, golden: list[PileupExample]
) -> None:
    with Client(server.address) as client:
        assert len(client.call_variants(golden[:4]).calls) == 4  # warm: model loaded, first call made
    before = _peak_rss_mib(server)
    huge = pileup_example(golden[0], "huge")
    huge.alts[:] = ["C"] * 50_000  # a 172 KB request: before, the server grew to 22.8 GB and died
    del huge.allele_depths[:]
    with grpc.insecure_channel(server.address) as channel:
        stub = variants_pb2_grpc.VariantCallingStub(channel)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.CallVariants(variants_pb2.CallVariantsRequest(examples=[huge]), timeout=60)
        elapsed = time.monotonic() - start
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == (
            f"examples[0].alts: at most {LIMIT} alt alleles per site (setting variants.max_alts_per_site), got 50000"
        )
        assert elapsed < 5
        # Beside good examples, it is that example's own error; the others are called.
        mixed = stub.CallVariants(
            variants_pb2.CallVariantsRequest(examples=[pileup_example(golden[1], "a"), huge]), timeout=60
        )
    assert mixed.results[1].error.field == "examples[1].alts"
    assert len(mixed.results[0].probabilities) == 3
    assert [c.pos for c in mixed.calls] == [golden[1].start + 1]
    assert _peak_rss_mib(server) - before < 100
    with Client(server.address) as client:
        assert client.health("genoserve.v1.VariantCalling") == "SERVING"
        assert len(client.call_variants(golden).calls) == 78  # a normal request after


def _dp(example: PileupExample, value: float) -> Callable[[Any], None]:
    def edit(feature: Any) -> None:
        variant = to_variant(example)
        variant.calls[0].info["DP"].values[0].Clear()
        variant.calls[0].info["DP"].values[0].number_value = value
        feature["variant/encoded"].bytes_list.value[0] = variant.SerializeToString()

    return edit


def test_broken_tf_examples_are_each_their_own_invalid_argument(
    server: ServerProcess, golden: list[PileupExample]
) -> None:
    g = golden[0]
    var = "tf_example variant/encoded"
    broken = [
        (_tf(replace(g, reference_name="")), f"{var} reference_name"),
        (_tf(replace(g, start=-5, end=-4)), f"{var} start"),
        (_tf(replace(g, reference_bases="", end=g.start)), f"{var} reference_bases"),
        (_tf(replace(g, reference_bases="XYZÉ", end=g.start + 4)), f"{var} reference_bases"),
        (_tf(replace(g, alternate_bases=[g.reference_bases])), f"{var} alternate_bases"),
        (
            _tf(replace(g, alternate_bases=["C"] * 50_000, call=replace(g.call, ad=[], vaf=[]))),
            f"{var} alternate_bases",
        ),
        (_tf(g, _shape([-1, 221, 7])), "tf_example image/shape"),
        (_tf(g, _shape([2**40, 2**40, 7], b"")), "tf_example image/shape"),
        (_tf(g, lambda f: f["label"].int64_list.SetInParent()), "tf_example label"),
        (_tf(g, _dp(g, math.nan)), f"{var} calls[0].info[DP]"),
        (_tf(g, _dp(g, math.inf)), f"{var} calls[0].info[DP]"),
        (_tf(g, _dp(g, -3.0)), f"{var} calls[0].info[DP]"),
    ]
    good = [variants_pb2.PileupExample(id="good", tf_example=_tf(golden[1]))]
    messages = good + [variants_pb2.PileupExample(id=f"bad{i}", tf_example=data) for i, (data, _) in enumerate(broken)]
    with Client(server.address) as client:
        response = client.call_variants(messages)
        assert client.health("genoserve.v1.VariantCalling") == "SERVING"
    assert len(response.results[0].probabilities) == 3
    assert [c.pos for c in response.calls] == [golden[1].start + 1]
    errors = [(r.id, r.error.field) for r in response.results[1:]]
    assert errors == [(f"bad{i}", f"examples[{i + 1}].{field}") for i, (_, field) in enumerate(broken)]
    assert all(r.error.message.startswith(f"{r.error.field}: ") for r in response.results[1:])
