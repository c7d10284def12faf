"""A real server on loopback: health, reflection, models, errors with details, concurrency, metrics."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status
from onnx import TensorProto, helper

from genoserve.api.codecs import tensor as codec
from genoserve.client import AsyncClient, Client
from genoserve.client.client import embed_request
from genoserve.core.cpus import cpu_budget
from genoserve.core.errors import InvalidArgument, NotFound
from genoserve.v1 import models_pb2, models_pb2_grpc, tensor_pb2
from tests.support.models import linear_onnx, linear_spec, write_model
from tests.support.server import FAST_RECONNECT, ServerProcess, metric, scrape

pytestmark = pytest.mark.integration


def test_reflection_lists_the_services(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"genoserve.v1.Models", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services


def test_health_serving_overall_and_per_service(server: ServerProcess) -> None:
    with Client(server.address) as client:
        assert client.health() == "SERVING"
        assert client.health("genoserve.v1.Models") == "SERVING"
        with pytest.raises(NotFound):
            client.health("genoserve.v1.NoSuchService")


def test_list_models_shows_contract_and_readiness(server: ServerProcess) -> None:
    with Client(server.address) as client:
        [info] = [m for m in client.list_models() if m.name == "platform-mlp"]
        binding = client.list_models(family="binding")
        [variants] = [m for m in client.list_models(family="variants") if m.name == "deepvariant-cnn-7ch"]
    # The family filter keeps only that family's models, with their task names (labels).
    assert {m.family for m in binding} == {"binding"}
    assert "platform-mlp" not in {m.name for m in binding}
    [deepbind] = [m for m in binding if m.name == "deepbind-ctcf"]
    assert list(deepbind.outputs[0].labels) == ["CTCF"]
    assert (info.family, info.version, info.ready) == ("platform", "1", True)
    assert info.state == models_pb2.MODEL_STATE_READY
    assert [(t.name, t.dtype, list(t.shape)) for t in info.inputs] == [("x", tensor_pb2.DATA_TYPE_FLOAT32, [-1, 128])]
    assert [(t.name, list(t.shape)) for t in info.outputs] == [("y", [-1, 16])]
    assert info.batching.max_batch_size == 256
    assert info.batching.instances == 1
    # The variants models' model.yaml asks for one single-threaded session call per core.
    assert variants.batching.instances == cpu_budget().usable
    assert variants.batching.max_queue_delay_us == 0
    assert info.provider == "CPUExecutionProvider"
    assert len(info.sha256) == 64


def test_cli_models_list_prints_each_model(server: ServerProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "genoserve.cli.main", "models", "list", "--address", server.address],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    [row] = [line for line in out.stdout.splitlines() if line.startswith("platform-mlp")]
    for expected in ("platform", "1", "yes", "x:float32[?,128]", "y:float32[?,16]"):
        assert expected in row


def test_unknown_model_is_not_found(server: ServerProcess) -> None:
    with Client(server.address) as client:
        with pytest.raises(NotFound, match="not in the repository"):
            client.infer("no-such-model", {"x": np.zeros((1, 128), np.float32)})
        with pytest.raises(NotFound):
            client.get_model("no-such-model")
        with pytest.raises(NotFound, match="no version '9'"):
            client.get_model("platform-mlp", "9")


def test_bad_request_gets_invalid_argument_with_field_violations(server: ServerProcess) -> None:
    request = models_pb2.InferRequest(
        model="platform-mlp",
        inputs={"x": codec.from_numpy(np.zeros((2, 100), np.float32)), "z": codec.from_numpy(np.zeros(1, np.int8))},
    )
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as info:
        models_pb2_grpc.ModelsStub(channel).Infer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(info.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    violations = {v.field: v.description for v in bad.field_violations}
    assert violations["inputs[x]"] == "dimension 1 must be 128, got 100"
    assert "has no input 'z'" in violations["inputs[z]"]


def test_truncated_tensor_bytes_are_refused_and_server_keeps_serving(server: ServerProcess) -> None:
    broken = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[4, 128], data=b"\0" * 100)
    with Client(server.address) as client:
        with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as info:
            models_pb2_grpc.ModelsStub(channel).Infer(
                models_pb2.InferRequest(model="platform-mlp", inputs={"x": broken}), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs[x].data" in (info.value.details() or "")
        with pytest.raises(InvalidArgument) as typed:
            client.infer("platform-mlp", {"x": np.zeros((3, 128), np.float64)})
        assert typed.value.violations[0].field == "inputs[x]"
        assert client.infer("platform-mlp", {"x": np.zeros((1, 128), np.float32)})["y"].shape == (1, 16)


#: Bytes that are no protobuf message: a length-delimited field 1 whose length runs past the end.
CORRUPT = b"\x0a\xff\xff\xff\x0f"


@pytest.mark.parametrize(
    "method",
    [
        "/genoserve.v1.Models/Infer",
        "/genoserve.v1.SequenceBinding/Predict",
        "/genoserve.v1.Segmentation/Segment",
        "/genoserve.v1.CellEmbedding/Embed",  # parsed by its own zero-copy codec
        "/genoserve.v1.VariantCalling/CallVariants",  # likewise
    ],
)
def test_undecodable_request_bytes_are_invalid_argument_naming_the_request(server: ServerProcess, method: str) -> None:
    """Another client's corrupt encoding is the caller's error, not UNKNOWN/INTERNAL, and is counted."""
    service, name = method.lstrip("/").split("/")
    before = metric(scrape(server), "genoserve_requests_total", service=service, method=name, code="INVALID_ARGUMENT")
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(method)(CORRUPT, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert details.startswith("request: cannot be decoded"), details
    assert "Request" in details, details  # the decoder's message names the request type
    status = rpc_status.from_call(info.value)
    assert status is not None
    violation = error_details_pb2.BadRequest()
    status.details[0].Unpack(violation)
    assert violation.field_violations[0].field == "request"
    counted(server, before + 1, service=service, method=name, code="INVALID_ARGUMENT")
    with Client(server.address) as client:
        assert client.health() == "SERVING"


def test_undecodable_message_in_a_stream_names_its_number(server: ServerProcess) -> None:
    """The message before it is answered; the stream then ends with INVALID_ARGUMENT naming message 1."""
    with Client(server.address) as client:
        [model] = [m for m in client.list_models(family="embedding") if m.name == "scvi-pbmc"]
    genes = list(model.inputs[0].labels)
    good = embed_request("scvi-pbmc", genes, np.ones((2, len(genes)), np.float32))
    responses: list[bytes] = []
    with grpc.insecure_channel(server.address) as channel:
        stream = channel.stream_stream("/genoserve.v1.CellEmbedding/EmbedStream")
        with pytest.raises(grpc.RpcError) as info:
            responses.extend(stream(iter([good, CORRUPT]), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("request message 1: cannot be decoded"), info.value.details()
    assert len(responses) == 1


def counted(server: ServerProcess, expected: float, **labels: str) -> None:
    """``genoserve_requests_total{labels}`` reaches ``expected``: the server counts a failed call
    after its status is sent, so the client can scrape before the count lands (wait up to 5 s)."""
    deadline = time.monotonic() + 5.0
    while (got := metric(scrape(server), "genoserve_requests_total", **labels)) < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert got == expected, labels


async def test_100_concurrent_clients_get_their_own_outputs(server: ServerProcess, platform_reference: Any) -> None:
    before = scrape(server)
    rng = np.random.default_rng(7)
    payloads = [[rng.normal(size=(int(rng.integers(1, 40)), 128)).astype(np.float32) for _ in range(3)]
                for _ in range(100)]  # fmt: skip

    async def one_client(batches: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        async with AsyncClient(server.address, timeout=60) as client:
            return [(await client.infer("platform-mlp", {"x": x}))["y"] for x in batches]

    results = await asyncio.gather(*(one_client(p) for p in payloads))
    for batches, outputs in zip(payloads, results, strict=True):
        for x, y in zip(batches, outputs, strict=True):
            np.testing.assert_allclose(y, platform_reference.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    after = scrape(server)
    requests = metric(after, "genoserve_requests_total", method="Infer", code="OK") - metric(
        before, "genoserve_requests_total", method="Infer", code="OK"
    )
    calls = metric(after, "genoserve_batch_size_count", model="platform-mlp") - metric(
        before, "genoserve_batch_size_count", model="platform-mlp"
    )
    assert requests == 300
    assert 0 < calls < requests, f"{requests} requests in {calls} session calls: no dynamic batching"
    assert metric(after, "genoserve_model_ready", model="platform-mlp", version="1") == 1
    assert metric(after, "genoserve_queue_duration_seconds_count", model="platform-mlp") >= 300


def test_error_codes_are_counted_in_metrics(server: ServerProcess) -> None:
    before = metric(scrape(server), "genoserve_requests_total", method="Infer", code="NOT_FOUND")
    with Client(server.address) as client, pytest.raises(NotFound):
        client.infer("missing", {"x": np.zeros((1, 128), np.float32)})
    counted(server, before + 1, method="Infer", code="NOT_FOUND")


def slow_model(root: Path) -> None:
    """A model whose warm-up takes about a second (a 2500x2500 matmul), to observe loading."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "x"], ["y"])],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = {
        "name": "slow", "family": "platform",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, -1, -1], "warmup_shape": [1, 2500, 2500]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, -1, -1]}],
    }  # fmt: skip
    write_model(root, spec, {1: model.SerializeToString()})


def test_health_is_not_serving_until_models_load_and_broken_models_say_why(tmp_path: Path) -> None:
    for i in range(4):
        slow_model(tmp_path / f"d{i}")
        (tmp_path / f"d{i}" / "slow").rename(tmp_path / f"slow{i}")
        text = (tmp_path / f"slow{i}" / "model.yaml").read_text().replace("name: slow", f"name: slow{i}")
        (tmp_path / f"slow{i}" / "model.yaml").write_text(text)
    write_model(tmp_path, linear_spec("broken"), {1: linear_onnx()}, sha_override={1: "a" * 64})
    process = ServerProcess(model_dir=tmp_path, log_path=tmp_path / "server.log").start(wait=False)
    seen: list[int] = []
    try:
        with grpc.insecure_channel(process.address, options=FAST_RECONNECT) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                except grpc.RpcError:
                    time.sleep(0.02)
                    continue
                if not seen or seen[-1] != status:
                    seen.append(status)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                if len(seen) == 1:  # still loading: a liveness probe must not restart the pod
                    live = stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=1).status
                    assert live == health_pb2.HealthCheckResponse.SERVING
                time.sleep(0.02)
        assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING]
        with Client(process.address) as client:
            models = {m.name: m for m in client.list_models()}
        assert models["slow3"].ready
        assert not models["broken"].ready
        assert models["broken"].state == models_pb2.MODEL_STATE_FAILED
        assert "sha256" in models["broken"].reason
    finally:
        assert process.terminate() == 0
