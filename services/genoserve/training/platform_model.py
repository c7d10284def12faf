"""The platform test model: a small MLP built directly as an ONNX graph from a seed.

It exists so that the platform (registry, sessions, batcher, server, client, benchmark) is tested
before any family model exists. x: float32 [batch, 128] -> y: float32 [batch, 16], two hidden
ReLU layers of 512. Reproducible: same seed, same bytes, same sha256.

    python -m genoserve.training.platform_model --out models --seed 0
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from genoserve.training.modelyaml import write_model_dir

NAME = "platform-mlp"
WIDTHS = (128, 512, 512, 16)


def weights(seed: int) -> list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """(W, b) per layer, He-initialised from ``seed``; W has shape (in, out), float32."""
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in itertools.pairwise(WIDTHS):
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out)).astype(np.float32)
        b = rng.normal(0.0, 0.1, size=(fan_out,)).astype(np.float32)
        layers.append((w, b))
    return layers


def reference_forward(x: np.ndarray[Any, Any], seed: int) -> np.ndarray[Any, Any]:
    """The same function in numpy (float64 accumulation), for checking the ONNX graph."""
    h = x.astype(np.float64)
    layers = weights(seed)
    for i, (w, b) in enumerate(layers):
        h = h @ w.astype(np.float64) + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h.astype(np.float32)


def build(seed: int) -> onnx.ModelProto:
    nodes, inits = [], []
    current = "x"
    layers = weights(seed)
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == len(layers) - 1 else f"h{i}"
        gemm_out = out if i == len(layers) - 1 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "platform_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTHS[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTHS[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="genoserve")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args(argv)

    model = build(args.seed)
    import onnxruntime as ort  # only to record the graph's agreement with numpy in model.yaml

    x = np.random.default_rng(args.seed + 1).normal(size=(256, WIDTHS[0])).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    max_err = float(np.abs(got - reference_forward(x, args.seed)).max())
    spec = {
        "name": NAME,
        "family": "platform",
        "description": "Platform test model: MLP 128-512-512-16 with ReLU, random weights from a seed.",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, WIDTHS[0]], "description": "features"}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, WIDTHS[-1]], "description": "scores"}],
        "batching": {"max_batch_size": 256, "max_queue_delay_us": 0, "max_queue_size": 2048},
    }
    directory = write_model_dir(
        args.out,
        spec,
        args.version,
        model.SerializeToString(),
        metrics={"max_abs_error_vs_numpy": max_err},
        provenance={"script": "genoserve.training.platform_model", "seed": str(args.seed)},
    )
    print(f"wrote {directory} (max |onnx - numpy| = {max_err:.2e})")


if __name__ == "__main__":
    main()
