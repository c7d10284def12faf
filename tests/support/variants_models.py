"""An exactly known variants model for service tests: allele fraction at the centre column.

f = (reads whose read_supports_variant pixel at the centre column is 254) / (reads with any
pixel there), over the read rows; probabilities = ((1-f)^2, 2f(1-f), f^2). Built directly as an
ONNX graph with the variants I/O contract (uint8 [batch, 100, 221, C] -> float32 [batch, 3]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.models import write_model

CENTRE = 110


def fraction_model_onnx(channels: int) -> bytes:
    consts = {
        "starts": np.array([5, CENTRE, 4], np.int64),
        "ends": np.array([100, CENTRE + 1, 5], np.int64),
        "axes": np.array([1, 2, 3], np.int64),
        "c254": np.array(254, np.uint8),
        "c0": np.array(0, np.uint8),
        "one": np.array(1.0, np.float32),
        "two": np.array(2.0, np.float32),
        "reduce_axes": np.array([1, 2, 3], np.int64),
    }
    nodes = [
        helper.make_node("Slice", ["pileup", "starts", "ends", "axes"], ["col"]),  # [B, 95, 1, 1]
        helper.make_node("Equal", ["col", "c254"], ["support_b"]),
        helper.make_node("Cast", ["support_b"], ["support"], to=TensorProto.FLOAT),
        helper.make_node("Greater", ["col", "c0"], ["present_b"]),
        helper.make_node("Cast", ["present_b"], ["present"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["support", "reduce_axes"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["present", "reduce_axes"], ["n0"], keepdims=0),
        helper.make_node("Max", ["n0", "one"], ["n"]),
        helper.make_node("Div", ["s", "n"], ["f"]),
        helper.make_node("Sub", ["one", "f"], ["g"]),
        helper.make_node("Mul", ["g", "g"], ["p0"]),
        helper.make_node("Mul", ["f", "g"], ["fg"]),
        helper.make_node("Mul", ["fg", "two"], ["p1"]),
        helper.make_node("Mul", ["f", "f"], ["p2"]),
        helper.make_node("Unsqueeze", ["p0", "axis1"], ["u0"]),
        helper.make_node("Unsqueeze", ["p1", "axis1"], ["u1"]),
        helper.make_node("Unsqueeze", ["p2", "axis1"], ["u2"]),
        helper.make_node("Concat", ["u0", "u1", "u2"], ["probabilities"], axis=1),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(
        nodes,
        "allele_fraction",
        [helper.make_tensor_value_info("pileup", TensorProto.UINT8, ["batch", 100, 221, channels])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def fraction_reference(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """The same function in numpy."""
    col = images[:, 5:, CENTRE, 4]
    s = (col == 254).sum(axis=1).astype(np.float64)
    n = np.maximum((col > 0).sum(axis=1), 1).astype(np.float64)
    f = s / n
    return np.stack([(1 - f) ** 2, 2 * f * (1 - f), f**2], axis=1).astype(np.float32)


def write_fraction_model(root: Path, name: str, channels: int) -> Path:
    spec = {
        "name": name,
        "family": "variants",
        "inputs": [{"name": "pileup", "dtype": "uint8", "shape": [-1, 100, 221, channels]}],
        "outputs": [
            {"name": "probabilities", "dtype": "float32", "shape": [-1, 3], "labels": ["hom_ref", "het", "hom_alt"]}
        ],
        "batching": {"max_batch_size": 64, "max_queue_delay_us": 0},
    }
    return write_model(root, spec, {1: fraction_model_onnx(channels)})
