"""Builds small ONNX models and model directories for registry, session and batcher tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper


def linear_onnx(n_in: int = 4, n_out: int = 3, seed: int = 0, batch_dim: str | int = "batch") -> bytes:
    """y = x @ W + b as an ONNX graph; x float32 [batch, n_in] -> y float32 [batch, n_out]."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    b = rng.normal(size=(n_out,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, n_out])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


#: Where external_graph keeps the tensors, relative to the graph's folder.
WEIGHTS = "weights/linear.bin"


def external_graph(folder: Path, location: str = WEIGHTS, seed: int = 0) -> Path:
    """linear_onnx with every tensor in ``folder / location``; the graph's path."""
    model = onnx.load_from_string(linear_onnx(seed=seed))
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)  # fmt: skip
    return path


def linear_reference(x: np.ndarray[Any, Any], n_in: int = 4, n_out: int = 3, seed: int = 0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    b = rng.normal(size=(n_out,)).astype(np.float32)
    return (x.astype(np.float64) @ w + b).astype(np.float32)


def linear_spec(name: str, n_in: int = 4, n_out: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "family": "platform",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, n_in]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, n_out]}],
        **extra,
    }


def write_model(
    root: Path, spec: dict[str, Any], versions: dict[int, bytes], sha_override: dict[int, str] | None = None
) -> Path:
    """Write ``root/<name>/model.yaml`` and one ``<v>/model.onnx`` per version."""
    directory: Path = root / str(spec["name"])
    entries = []
    for version, data in sorted(versions.items()):
        (directory / str(version)).mkdir(parents=True, exist_ok=True)
        (directory / str(version) / "model.onnx").write_bytes(data)
        sha = (sha_override or {}).get(version, hashlib.sha256(data).hexdigest())
        entries.append({"version": version, "sha256": sha})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.yaml").write_text(yaml.safe_dump({**spec, "versions": entries}, sort_keys=False))
    return directory
