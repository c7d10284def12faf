"""The Open Inference Protocol (KServe v2 / Triton gRPC) and Models/InferStream, against a real
server on loopback; the OIP clients are the real tritonclient package and KServe's own
``InferenceGRPCClient`` (in their own virtualenv)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from genoserve.api.codecs.tensor import from_numpy
from genoserve.v1 import models_pb2, models_pb2_grpc
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

CLIENTS_PYTHON = REPO / ".venv-clients" / "bin" / "python"
MODEL = "platform-mlp"
ONNX = REPO / "models" / MODEL / "1" / "model.onnx"


def reference(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


def triton(address: str, token: str, workdir: Path, script: str = "triton_client.py") -> dict[str, Any]:
    """Run a client script of tests/support with .venv-clients' Python; its JSON report."""
    assert CLIENTS_PYTHON.exists(), "run `make setup` (it makes .venv-clients with tritonclient and kserve)"
    done = subprocess.run(
        [str(CLIENTS_PYTHON), str(REPO / "tests" / "support" / script), address, token, str(workdir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_tritonclient_speaks_to_genoserve(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("lab-token lab\n")
    x = np.random.default_rng(0).normal(size=(40, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with ServerProcess("--model", MODEL, "--tokens-file", str(tokens), log_path=tmp_path / "server.log") as server:
        report = triton(server.address, "lab-token", tmp_path)
        refused = subprocess.run(
            [str(CLIENTS_PYTHON), "-c", "import sys, tritonclient.grpc as tc\n"
             f"print(tc.InferenceServerClient('{server.address}').is_server_ready())"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert report["live"] is True
    assert report["ready"] is True
    assert report["model_ready"] is True
    assert report["unknown_ready"] is False
    assert report["server"]["name"] == "genoserve"
    metadata = report["metadata"]
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "128"]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["-1", "16"]}]
    expected = reference(x)
    np.testing.assert_allclose(np.load(tmp_path / "infer.npy"), expected, rtol=1e-5, atol=1e-5)
    assert report["infer"] == {"id": "one", "version": "1"}
    status, message = report["bad"]
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[x]" in message
    # The stream: every row answered, tagged by its id, equal to the model's; the bad one failed alone.
    assert report["stream_rows"] == len(x)
    np.testing.assert_allclose(np.load(tmp_path / "stream.npy"), expected, rtol=1e-5, atol=1e-5)
    [(key, error)] = report["stream_other"].items()
    assert key.startswith("error-")
    assert "INVALID_ARGUMENT" in error
    # The same auth as the native API: no token, no answer.
    assert refused.returncode != 0
    assert "UNAUTHENTICATED" in refused.stderr


def test_kserves_own_client_speaks_to_genoserve(tmp_path: Path) -> None:
    """KServe's InferenceGRPCClient, as a KServe user's pipeline calls a model: readiness, and
    ModelInfer with the tensor as raw_input_contents and as typed contents, through a token."""
    tokens = tmp_path / "tokens"
    tokens.write_text("lab-token lab\n")
    x = np.random.default_rng(1).normal(size=(24, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with ServerProcess("--model", MODEL, "--tokens-file", str(tokens), log_path=tmp_path / "server.log") as server:
        report = triton(server.address, "lab-token", tmp_path, "kserve_client.py")
    assert (report["live"], report["ready"], report["model_ready"]) == (True, True, True)
    expected = reference(x)
    for kind in ("raw", "contents"):
        np.testing.assert_allclose(np.load(tmp_path / f"kserve-{kind}.npy"), expected, rtol=1e-5, atol=1e-5)
        assert report[kind] == {"id": kind, "model": MODEL, "output": "y"}
    status, message = report["bad"]
    assert status == "INVALID_ARGUMENT"
    assert "inputs[x]" in message


def test_infer_stream_answers_each_request_by_id(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(64, 128)).astype(np.float32)
    requests = [models_pb2.InferRequest(model=MODEL, id=f"r{i}", inputs={"x": from_numpy(x[i : i + 1])})
                for i in range(len(x))]  # fmt: skip
    requests.insert(10, models_pb2.InferRequest(model="no-such-model", id="unknown"))
    requests.insert(20, models_pb2.InferRequest(model=MODEL, id="bad", inputs={"x": from_numpy(x[:1, :7])}))
    server = ServerProcess("--model", MODEL, log_path=tmp_path / "server.log")
    with server, grpc.insecure_channel(server.address) as channel:
        answers = list(models_pb2_grpc.ModelsStub(channel).InferStream(iter(requests), timeout=60))
    assert len(answers) == len(requests)
    by_id = {a.response.id: a for a in answers}
    assert by_id["unknown"].error.code == "NOT_FOUND"
    assert by_id["bad"].error.code == "INVALID_ARGUMENT"
    assert "inputs[x]" in by_id["bad"].error.message
    expected = reference(x)
    for i in range(len(x)):
        answer = by_id[f"r{i}"]
        assert not answer.HasField("error")
        assert answer.response.version == "1"
        y = np.frombuffer(answer.response.outputs["y"].data, np.float32).reshape(1, 16)
        np.testing.assert_allclose(y, expected[i : i + 1], rtol=1e-5, atol=1e-5)
