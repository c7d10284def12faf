"""A small, exactly known binding model for service tests: a consensus-match scan.

logit = max over positions of (number of bases matching ``motif`` in a window) - len(motif) + 2,
on the strand it is given: a perfect site scores 2, one mismatch 1, background far below 0.
Built directly as an ONNX graph (Transpose, Conv, ReduceMax) with the binding I/O contract.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.models import write_model

ACGT = "ACGT"


def match_model_onnx(motif: str, length: int) -> bytes:
    kernel = np.zeros((1, 4, len(motif)), np.float32)
    for i, base in enumerate(motif):
        kernel[0, ACGT.index(base), i] = 1.0
    bias = np.array([2.0 - len(motif)], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
            helper.make_node("Conv", ["xt", "w", "b"], ["conv"]),
            helper.make_node("ReduceMax", ["conv"], ["logit"], axes=[2], keepdims=0),
        ],
        "match",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", length, 4])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(kernel, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def write_match_model(root: Path, name: str, motif: str, task: str, length: int = 101) -> Path:
    spec = {
        "name": name,
        "family": "binding",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, length, 4]}],
        "outputs": [{"name": "logit", "dtype": "float32", "shape": [-1, 1], "labels": [task]}],
        "preprocessing": {"sequence_length": length, "default_strand": "max"},
        "batching": {"max_batch_size": 512, "max_queue_delay_us": 0},
    }
    return write_model(root, spec, {1: match_model_onnx(motif, length)})


def write_reference(path: Path, contigs: dict[str, str]) -> Path:
    """A plain FASTA with its .fai (via pysam)."""
    import pysam

    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in contigs.items()))
    pysam.faidx(str(path))
    return path


def random_dna(n: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list(ACGT), size=n))
