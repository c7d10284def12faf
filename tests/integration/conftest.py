"""Integration fixtures: a real server process on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``genoserve serve`` on the committed models/, SERVING."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    process = ServerProcess(log_path=log)
    process.start()
    yield process
    assert process.terminate() == 0, process.log()


@pytest.fixture
def platform_reference() -> object:
    """A local ONNX Runtime session on the committed platform model, to compare served outputs."""
    import onnxruntime as ort

    path = Path(__file__).resolve().parents[2] / "models" / "platform-mlp" / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
