"""Flow following as an ONNX graph, so that ONNX Runtime runs it on the GPU where one is present.

The graph does what ``dynamics.follow_flows`` does (the same bilinear Euler steps in float32),
with the steps as an ONNX ``Loop``:

    inputs:  flows float32 [2, H, W] (already gated by the cell probability; H, W >= 2),
             points float32 [N, 2] (start y, x), niter int64 scalar
    output:  ends float32 [N, 2]

The graph is built with the ``onnx`` package (a development dependency) and committed as
``follow_flows.onnx`` beside this module; the server needs only ONNX Runtime to run it. A unit
test checks that the committed file is what ``build()`` makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from genoserve.segmentation.dynamics import follow_flows

Array = np.ndarray[Any, Any]

GRAPH_PATH = Path(__file__).with_name("follow_flows.onnx")


def build() -> bytes:
    """The serialised graph (deterministic bytes)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: Any, dtype: Any) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, dtype=dtype)))

    node = helper.make_node
    body_nodes = [
        const("zero_f", 0.0, np.float32),
        node("Floor", ["p"], ["floor"]),
        node("Min", ["floor", "cap_f"], ["corner_f"]),
        node("Sub", ["p", "corner_f"], ["frac"]),  # [N, 2]
        node("Cast", ["corner_f"], ["corner"], to=TensorProto.INT64),
        node("Mul", ["corner", "strides"], ["scaled"]),  # [N, 2] * [W, 1]
        node("ReduceSum", ["scaled", "axis1"], ["i00"], keepdims=0),  # [N]
        node("Add", ["i00", "one_i"], ["i01"]),
        node("Add", ["i00", "width"], ["i10"]),
        node("Add", ["i10", "one_i"], ["i11"]),
        *[node("Gather", ["flat", f"i{k}"], [f"v{k}"], axis=1) for k in ("00", "01", "10", "11")],  # [2, N]
        node("Transpose", ["frac"], ["frac_t"], perm=[1, 0]),  # [2, N]: row 0 = ty, row 1 = tx
        node("Gather", ["frac_t", "zero_i"], ["ty"], axis=0),  # [N]
        node("Gather", ["frac_t", "one_i"], ["tx"], axis=0),
        node("Sub", ["v01", "v00"], ["d_top"]),
        node("Mul", ["d_top", "tx"], ["m_top"]),
        node("Add", ["v00", "m_top"], ["top"]),
        node("Sub", ["v11", "v10"], ["d_bot"]),
        node("Mul", ["d_bot", "tx"], ["m_bot"]),
        node("Add", ["v10", "m_bot"], ["bot"]),
        node("Sub", ["bot", "top"], ["d_mid"]),
        node("Mul", ["d_mid", "ty"], ["m_mid"]),
        node("Add", ["top", "m_mid"], ["step"]),  # [2, N]
        node("Transpose", ["step"], ["step_t"], perm=[1, 0]),
        node("Add", ["p", "step_t"], ["moved"]),
        node("Max", ["moved", "zero_f"], ["low_clipped"]),
        node("Min", ["low_clipped", "limit"], ["p_out"]),
        node("Identity", ["cond_in"], ["cond_out"]),
    ]
    body = helper.make_graph(
        body_nodes,
        "follow_step",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("p_out", TensorProto.FLOAT, ["N", 2])],
    )  # fmt: skip
    outer = [
        const("zero_i", 0, np.int64),
        const("one_i", 1, np.int64),
        const("two_i", 2, np.int64),
        const("axis1", [1], np.int64),
        const("flat_shape", [2, -1], np.int64),
        const("true", True, np.bool_),
        node("Shape", ["flows"], ["shape"]),
        node("Gather", ["shape", "one_i"], ["height"], axis=0),
        node("Gather", ["shape", "two_i"], ["width"], axis=0),
        node("Reshape", ["flows", "flat_shape"], ["flat"]),
        node("Sub", ["height", "one_i"], ["h1"]),
        node("Sub", ["width", "one_i"], ["w1"]),
        node("Sub", ["height", "two_i"], ["h2"]),
        node("Sub", ["width", "two_i"], ["w2"]),
        node("Unsqueeze", ["h1", "zero_axes"], ["h1v"]),
        node("Unsqueeze", ["w1", "zero_axes"], ["w1v"]),
        node("Unsqueeze", ["h2", "zero_axes"], ["h2v"]),
        node("Unsqueeze", ["w2", "zero_axes"], ["w2v"]),
        node("Unsqueeze", ["width", "zero_axes"], ["wv"]),
        const("zero_axes", [0], np.int64),
        const("one_v", [1], np.int64),
        node("Concat", ["h1v", "w1v"], ["limit_i"], axis=0),
        node("Cast", ["limit_i"], ["limit"], to=TensorProto.FLOAT),  # [2]: H-1, W-1
        node("Concat", ["h2v", "w2v"], ["cap_i"], axis=0),
        node("Cast", ["cap_i"], ["cap_f"], to=TensorProto.FLOAT),  # [2]: H-2, W-2
        node("Concat", ["wv", "one_v"], ["strides"], axis=0),  # [2]: W, 1
        node("Loop", ["niter", "true", "points"], ["ends"], body=body),
    ]
    # Constants must come before their users in a topologically sorted graph.
    outer.sort(key=lambda n: 0 if n.op_type == "Constant" else 1)
    graph = helper.make_graph(
        outer,
        "follow_flows",
        [helper.make_tensor_value_info("flows", TensorProto.FLOAT, [2, "H", "W"]),
         helper.make_tensor_value_info("points", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("niter", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("ends", TensorProto.FLOAT, ["N", 2])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="genoserve")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


class OnnxFollower:
    """``follow_flows`` through an ONNX Runtime session of the committed graph.

    ``session`` is anything with ``run({name: array}) -> {name: array}`` (genoserve's
    ``OrtSession``, which puts the graph on the GPU where one is present). Images with a side
    under 2 pixels go to the numpy path.
    """

    def __init__(self, session: Any) -> None:
        self.session = session

    def __call__(self, flows: Array, ys: Array, xs: Array, niter: int) -> Array:
        if min(flows.shape[1:]) < 2 or ys.size == 0:
            return follow_flows(flows, ys, xs, niter)
        feeds = {
            "flows": np.ascontiguousarray(flows, dtype=np.float32),
            "points": np.stack([ys, xs], axis=1).astype(np.float32),
            "niter": np.array(niter, dtype=np.int64),
        }
        ends = self.session.run(feeds)["ends"]
        return np.ascontiguousarray(np.asarray(ends, dtype=np.float32).T)


if __name__ == "__main__":  # regenerate the committed graph
    GRAPH_PATH.write_bytes(build())
    print(f"wrote {GRAPH_PATH}")
