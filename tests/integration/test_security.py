"""TLS, mutual TLS and bearer-token auth against a real ``genoserve serve`` process.

One server per configuration (module-scoped fixtures): plain TLS, mTLS, and plaintext with a
tokens file. Clients are ``genoserve.client.Client`` as users use it; refusals are asserted on
the gRPC status code the client raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genoserve.client import Client
from genoserve.core.errors import Unauthenticated, Unavailable
from genoserve.v1 import models_pb2, models_pb2_grpc
from tests.support.certs import TlsFiles, write_tls_files
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.integration

MODEL = "platform-mlp"
#: Refusals must come back quickly and un-retried (the client retries UNAVAILABLE by default).
REFUSED = {"timeout": 5.0, "max_attempts": 1}
TOKENS = {"s3cret-alpha": "lab-a", "s3cret-beta": None}


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """An unrelated CA (and a server/client pair it signed) that the servers do not trust."""
    return write_tls_files(tmp_path_factory.mktemp("other-certs"), prefix="other-")


def _running(server: ServerProcess, channel: grpc.Channel | None = None) -> Iterator[ServerProcess]:
    try:
        server.start(channel=channel)
        yield server
    finally:
        if channel is not None:
            channel.close()
        if server.proc is not None:
            code = server.terminate()
            assert code == 0, f"server exited with {code}: {server.log()}"


@pytest.fixture(scope="module")
def tls_server(certs: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("tls-server") / "server.log"
    server = ServerProcess("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key), log_path=log)
    creds = grpc.ssl_channel_credentials(root_certificates=certs.ca_cert.read_bytes())
    yield from _running(server, grpc.secure_channel(server.address, creds))


@pytest.fixture(scope="module")
def mtls_server(certs: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("mtls-server") / "server.log"
    server = ServerProcess(
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        "--tls-client-ca", str(certs.ca_cert),
        log_path=log,
    )  # fmt: skip
    creds = grpc.ssl_channel_credentials(
        root_certificates=certs.ca_cert.read_bytes(),
        private_key=certs.client_key.read_bytes(),
        certificate_chain=certs.client_cert.read_bytes(),
    )
    yield from _running(server, grpc.secure_channel(server.address, creds))


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("auth-server")
    tokens = directory / "tokens"
    lines = ["# test tokens"] + [f"{token} {tenant or ''}".rstrip() for token, tenant in TOKENS.items()]
    tokens.write_text("\n".join(lines) + "\n")
    server = ServerProcess("--tokens-file", str(tokens), log_path=directory / "server.log")
    yield from _running(server)


# -- helpers ----------------------------------------------------------------------------------------


def _assert_serves(client: Client, reference: ort.InferenceSession) -> None:
    """The client lists the model and gets the same outputs as a local ONNX Runtime session."""
    assert MODEL in [m.name for m in client.list_models()]
    x = np.random.default_rng(7).normal(size=(5, 128)).astype(np.float32)
    y = client.infer(MODEL, {"x": x})["y"]
    assert y.shape == (5, 16)
    assert y.dtype == np.float32
    (expected,) = reference.run(["y"], {"x": x})
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def _assert_refused(address: str, **kwargs: Any) -> None:
    """ListModels through a client built with ``kwargs`` fails at the transport (UNAVAILABLE)."""
    with Client(address, **REFUSED, **kwargs) as client, pytest.raises(Unavailable) as info:
        client.list_models()
    assert info.value.code == "UNAVAILABLE"


def _x(rows: int = 3) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.ones((rows, 128), dtype=np.float32)}


# -- TLS --------------------------------------------------------------------------------------------


def test_tls_client_trusting_the_ca_is_served(
    tls_server: ServerProcess, certs: TlsFiles, platform_reference: ort.InferenceSession
) -> None:
    with Client(tls_server.address, ca_file=certs.ca_cert, timeout=10.0) as client:
        _assert_serves(client, platform_reference)
        assert client.health() == "SERVING"


def test_tls_server_cert_is_valid_for_localhost(tls_server: ServerProcess, certs: TlsFiles) -> None:
    """Clients that dial by name (``localhost``) verify the certificate's DNS SAN."""
    with Client(f"localhost:{tls_server.port}", ca_file=certs.ca_cert, timeout=10.0) as client:
        assert MODEL in [m.name for m in client.list_models()]


def test_tls_refuses_plaintext_client(tls_server: ServerProcess) -> None:
    _assert_refused(tls_server.address)


def test_tls_refuses_client_trusting_another_ca(tls_server: ServerProcess, other_certs: TlsFiles) -> None:
    _assert_refused(tls_server.address, ca_file=other_certs.ca_cert)


# -- mTLS -------------------------------------------------------------------------------------------


def test_mtls_client_with_a_cert_from_the_client_ca_is_served(
    mtls_server: ServerProcess, certs: TlsFiles, platform_reference: ort.InferenceSession
) -> None:
    with Client(
        mtls_server.address,
        ca_file=certs.ca_cert,
        cert_file=certs.client_cert,
        key_file=certs.client_key,
        timeout=10.0,
    ) as client:
        _assert_serves(client, platform_reference)


def test_mtls_refuses_client_without_a_cert(mtls_server: ServerProcess, certs: TlsFiles) -> None:
    _assert_refused(mtls_server.address, ca_file=certs.ca_cert)


def test_mtls_refuses_client_cert_from_another_ca(
    mtls_server: ServerProcess, certs: TlsFiles, other_certs: TlsFiles
) -> None:
    _assert_refused(
        mtls_server.address,
        ca_file=certs.ca_cert,
        cert_file=other_certs.client_cert,
        key_file=other_certs.client_key,
    )


def test_mtls_refuses_plaintext_client(mtls_server: ServerProcess) -> None:
    _assert_refused(mtls_server.address)


# -- bearer tokens ----------------------------------------------------------------------------------


CALLS = {
    "ListModels": lambda client: client.list_models(),
    "Infer": lambda client: client.infer(MODEL, _x()),
}


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize("token", [None, "wrong-token", "s3cret-alph", "s3cret-alpha-and-more"])
def test_missing_or_wrong_token_is_unauthenticated(auth_server: ServerProcess, method: str, token: str | None) -> None:
    with Client(auth_server.address, token=token, timeout=10.0) as client, pytest.raises(Unauthenticated) as info:
        CALLS[method](client)
    assert info.value.code == "UNAUTHENTICATED"
    assert "token" in info.value.message


@pytest.mark.parametrize("header", ["Basic s3cret-alpha", "s3cret-alpha", "Bearer"])
def test_malformed_authorization_header_is_unauthenticated(auth_server: ServerProcess, header: str) -> None:
    """Raw gRPC with a hand-written header: only ``Bearer <token>`` is accepted."""
    with grpc.insecure_channel(auth_server.address) as channel:
        stub = models_pb2_grpc.ModelsStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(models_pb2.ListModelsRequest(), metadata=[("authorization", header)], timeout=10.0)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_token_is_checked_before_the_request_bytes(auth_server: ServerProcess) -> None:
    """Undecodable bytes: UNAUTHENTICATED without a token (nothing about the request leaks),
    INVALID_ARGUMENT with one."""
    corrupt = b"\x0a\xff\xff\xff\x0f"
    with grpc.insecure_channel(auth_server.address) as channel:
        infer = channel.unary_unary("/genoserve.v1.Models/Infer")
        with pytest.raises(grpc.RpcError) as anonymous:
            infer(corrupt, timeout=10.0)
        with pytest.raises(grpc.RpcError) as signed:
            infer(corrupt, metadata=[("authorization", f"Bearer {sorted(TOKENS)[0]}")], timeout=10.0)
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert signed.value.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("token", sorted(TOKENS))
def test_valid_token_is_served(
    auth_server: ServerProcess, token: str, platform_reference: ort.InferenceSession
) -> None:
    with Client(auth_server.address, token=token, timeout=10.0) as client:
        _assert_serves(client, platform_reference)


def test_health_check_needs_no_token(auth_server: ServerProcess) -> None:
    """Kubernetes gRPC probes cannot send metadata, so health is exempt from auth."""
    with Client(auth_server.address, timeout=10.0) as client:
        assert client.health() == "SERVING"
        assert client.health("genoserve.v1.Models") == "SERVING"
    with grpc.insecure_channel(auth_server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10.0)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- health-only port for probes ----------------------------------------------------------------------


def test_tls_server_answers_probes_on_a_plaintext_health_only_port(certs: TlsFiles, tmp_path: Path) -> None:
    """Kubernetes' native gRPC probes cannot speak TLS: they use ``--health-port``, which serves
    grpc.health.v1 and nothing else."""
    health_port = free_port()
    server = ServerProcess(
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        "--health-port", str(health_port), log_path=tmp_path / "server.log",
    )  # fmt: skip
    creds = grpc.ssl_channel_credentials(root_certificates=certs.ca_cert.read_bytes())
    for _ in _running(server, grpc.secure_channel(server.address, creds)):
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "liveness", "genoserve.v1.Models"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as info:
                models_pb2_grpc.ModelsStub(channel).ListModels(models_pb2.ListModelsRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_token_is_checked_on_every_call_not_once_per_method(auth_server: ServerProcess) -> None:
    """The server wraps each method's handler once; the header must still be read per call."""
    good = sorted(TOKENS)[0]
    with grpc.insecure_channel(auth_server.address) as channel:
        stub = models_pb2_grpc.ModelsStub(channel)
        for header in [f"Bearer {good}", "Bearer wrong-token", f"Bearer {good}", None, f"Bearer {good}"]:
            metadata = [("authorization", header)] if header else None
            if header == f"Bearer {good}":
                stub.ListModels(models_pb2.ListModelsRequest(), metadata=metadata, timeout=10.0)
                continue
            with pytest.raises(grpc.RpcError) as info:
                stub.ListModels(models_pb2.ListModelsRequest(), metadata=metadata, timeout=10.0)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
