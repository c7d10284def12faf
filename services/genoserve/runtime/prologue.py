"""Rewrites of a graph's first layer at load time that give the same results for less work.

Folding an input's leading log1p out of the graph, so the caller applies it where it is cheap:

scVI's encoder begins with log1p of the counts (scvi-tools' ``log_variational``), which torch
exports as ``Log(Add(counts, 1))``: two element-wise passes over the dense [cells, genes] input,
each writing a new array. At 2,000 genes they are over half of the encoder's session time (ONNX
Runtime's profile of ``scvi-sim-batch``, 4,096 cells, on this repository's CPU machine: Log 44 %,
Add 12 %, Gemm 34 %; 7 ms of the 14 ms call on two threads), while numpy's log1p in place over the
dense array the embedding family lays out anyway takes 2 ms on one thread. So the family takes
log1p there and the session runs the graph without those two nodes.

The folded input keeps its name and shape. ``LoadedModel`` applies log1p itself for callers that
pass raw values (the generic ``Infer``), so every path gives the same answer.

Splitting a ``Gemm`` over a ``Concat`` of inputs into one ``Gemm`` per input (``split_concat_gemm``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

Array = np.ndarray[Any, Any]


def _constant(graph: onnx.GraphProto, name: str) -> Array | None:
    """The value of ``name`` when it is an initializer or a Constant node's output, else None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name == "value_float":
                    return np.array(attr.f, dtype=np.float32)
            return None
    return None


def _is_one(graph: onnx.GraphProto, name: str) -> bool:
    value = _constant(graph, name)
    return value is not None and value.size == 1 and float(value.reshape(-1)[0]) == 1.0


def fold_log1p(model: onnx.ModelProto) -> frozenset[str]:
    """Remove ``Log(Add(x, 1))`` from ``model`` (in place) for every graph input ``x`` whose only
    use it is; the nodes that read the Log's output read ``x`` instead. Returns the inputs folded
    (their values must now be given as log1p(x)); an empty set leaves the graph unchanged."""
    graph = model.graph
    users: defaultdict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    graph_outputs = {o.name for o in graph.output}
    initializers = {i.name for i in graph.initializer}
    folded: set[str] = set()
    removed: list[onnx.NodeProto] = []
    for graph_input in graph.input:
        x = graph_input.name
        if x in initializers or x in graph_outputs or len(users[x]) != 1 or users[x][0].op_type != "Add":
            continue
        add = users[x][0]
        others = [name for name in add.input if name != x]
        if len(add.input) != 2 or len(others) != 1 or not _is_one(graph, others[0]):
            continue
        sum_users = users[add.output[0]]
        if add.output[0] in graph_outputs or len(sum_users) != 1 or sum_users[0].op_type != "Log":
            continue
        log = sum_users[0]
        if log.output[0] in graph_outputs:
            continue
        for node in users[log.output[0]]:
            for i, name in enumerate(node.input):
                if name == log.output[0]:
                    node.input[i] = x
        removed += [add, log]
        if len(users[others[0]]) == 1:  # the constant 1 is used by nothing else: drop it too
            removed += [n for n in graph.node if n.op_type == "Constant" and n.output[0] == others[0]]
            unused = [i for i in graph.initializer if i.name == others[0]]
            for init in unused:
                graph.initializer.remove(init)
        folded.add(x)
    for node in removed:
        graph.node.remove(node)
    return frozenset(folded)


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _widths(model: onnx.ModelProto, names: list[str]) -> list[int] | None:
    """The static last dimension of each 2-D tensor in ``names`` (shape inference), else None."""
    inferred = shape_inference.infer_shapes(model).graph
    known = {v.name: v for v in (*inferred.input, *inferred.value_info, *inferred.output)}
    widths = []
    for name in names:
        value = known.get(name)
        dims = value.type.tensor_type.shape.dim if value is not None else []
        if len(dims) != 2 or not dims[1].HasField("dim_value"):
            return None
        widths.append(int(dims[1].dim_value))
    return widths


def split_concat_gemm(model: onnx.ModelProto) -> int:
    """Replace ``Gemm(Concat(x1, x2, ..., axis=1), W, b)`` by ``Gemm(x1, W1, b) + Gemm(x2, W2) + ...``
    (in place) where the x (two or more) are graph inputs, W is a weight and the Concat is used
    nowhere else: the same sums without copying the inputs into one new array (scVI's encoder with
    ``encode_covariates`` joins the [cells, 2,000] counts and the one-hot batch that way: 1.2 ms of
    a 6 ms session call at 4,096 cells). Returns how many were split."""
    graph = model.graph
    users: defaultdict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    weights = {i.name: i for i in graph.initializer if i.name not in {g.name for g in graph.input}}
    graph_inputs = {i.name for i in graph.input} - set(weights)
    graph_outputs = {o.name for o in graph.output}
    split = 0
    for concat in [n for n in graph.node if n.op_type == "Concat"]:
        out = concat.output[0]
        if _attribute(concat, "axis", 0) not in (1, -1) or out in graph_outputs or len(users[out]) != 1:
            continue
        if len(concat.input) < 2 or not set(concat.input) <= graph_inputs:  # only copies of requests matter
            continue
        gemm = users[out][0]
        if gemm.op_type != "Gemm" or gemm.input[0] != out or gemm.input[1] not in weights or out in gemm.input[1:]:
            continue
        if _attribute(gemm, "transA", 0) or _attribute(gemm, "alpha", 1.0) != 1.0:
            continue
        widths = _widths(model, list(concat.input))
        if widths is None or len(users[gemm.input[1]]) != 1:
            continue
        trans_b = int(_attribute(gemm, "transB", 0))
        weight = numpy_helper.to_array(weights[gemm.input[1]])
        if weight.ndim != 2 or weight.shape[1 if trans_b else 0] != sum(widths):
            continue
        nodes, partial_sums = [], []
        start = 0
        for i, (part, width) in enumerate(zip(concat.input, widths, strict=True)):
            piece = weight[:, start : start + width] if trans_b else weight[start : start + width]
            start += width
            name = f"{gemm.input[1]}/part{i}"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(piece), name))
            bias = list(gemm.input[2:3]) if i == 0 else []
            extra = {"beta": _attribute(gemm, "beta", 1.0)} if bias else {}
            partial_sums.append(f"{gemm.output[0]}/part{i}")
            nodes.append(helper.make_node("Gemm", [part, name, *bias], [partial_sums[-1]], transB=trans_b, **extra))
        total = partial_sums[0]
        for i, term in enumerate(partial_sums[1:], start=1):
            total_out = gemm.output[0] if i == len(partial_sums) - 1 else f"{gemm.output[0]}/sum{i}"
            nodes.append(helper.make_node("Add", [total, term], [total_out]))
            total = total_out
        position = list(graph.node).index(gemm)
        for offset, node in enumerate(nodes):
            graph.node.insert(position + offset, node)
        graph.node.remove(gemm)
        graph.node.remove(concat)
        graph.initializer.remove(weights[gemm.input[1]])
        split += 1
    return split


def rewrite(model: onnx.ModelProto, log1p: bool = True) -> tuple[frozenset[str], bool]:
    """Every rewrite of this module, in place: log1p folded out (with ``log1p``), then Concat +
    Gemm split. Returns the inputs that now take log1p(x), and whether the graph changed at all."""
    folded = fold_log1p(model) if log1p else frozenset()
    split = split_concat_gemm(model)
    return folded, bool(folded or split)
