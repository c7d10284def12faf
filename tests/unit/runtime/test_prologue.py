"""Folding an encoder's leading log1p out of its graph: which graphs fold, and that the folded
session given log1p(x) (or ``LoadedModel`` given x) answers as the committed graph given x."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from genoserve.core.errors import InternalError
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.model import LoadedModel
from genoserve.runtime.prologue import fold_log1p
from genoserve.runtime.session import OrtSession
from tests.support.server import REPO

MODELS = REPO / "models"
SETTINGS = RuntimeSettings(device="cpu", intra_op_threads=1)


def counts(rng: np.random.Generator, n: int, genes: int) -> np.ndarray:
    x = rng.negative_binomial(2, 0.3, size=(n, genes)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] = 0
    return x


@pytest.mark.parametrize("name", ["scvi-pbmc", "scvi-sim-batch"])
def test_committed_encoders_fold_and_answer_the_same(name: str) -> None:
    path = MODELS / name / "1" / "model.onnx"
    full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    folded = OrtSession(path, SETTINGS)
    assert folded.log1p_inputs == {"counts"}
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Log" in ops  # the committed file keeps its log1p: only the session's graph loses it
    rng = np.random.default_rng(0)
    feeds = {i.name: np.zeros((50, i.shape[1]), np.float32) for i in full.get_inputs()}
    feeds["counts"] = counts(rng, 50, feeds["counts"].shape[1])
    if "batch" in feeds:
        feeds["batch"][np.arange(50), rng.integers(0, feeds["batch"].shape[1], 50)] = 1
    expected = dict(zip([o.name for o in full.get_outputs()], full.run(None, feeds), strict=True))
    got = folded.run({**feeds, "counts": np.log1p(feeds["counts"])})
    for output, value in expected.items():
        np.testing.assert_allclose(got[output], value, rtol=1e-5, atol=1e-6)


def test_loaded_model_takes_log1p_for_callers_that_pass_raw_counts() -> None:
    [record] = [r for r in registry.scan(MODELS, ("scvi-pbmc",)) if r.version is not None]
    assert record.spec is not None
    assert record.version is not None
    model = LoadedModel(record.spec, record.version, OrtSession(record.onnx_path, SETTINGS), 64)
    plain = LoadedModel(
        record.spec, record.version, OrtSession(record.onnx_path, RuntimeSettings(device="cpu", fold_log1p=False)), 64
    )
    assert model.log1p_inputs == {"counts"}
    assert plain.log1p_inputs == frozenset()
    x = counts(np.random.default_rng(1), 100, 765)  # 100 rows: two session calls of 64
    reference = plain.infer_sync({"counts": x})["latent_mean"]
    np.testing.assert_allclose(model.infer_sync({"counts": x})["latent_mean"], reference, atol=1e-5)
    given = model.infer_sync({"counts": np.log1p(x)}, log1p_applied={"counts"})["latent_mean"]
    np.testing.assert_allclose(given, reference, atol=1e-5)
    with pytest.raises(InternalError, match="log1p applied to \\['counts'\\]"):
        plain.infer_sync({"counts": np.log1p(x)}, log1p_applied={"counts"})


def graph(nodes: list[onnx.NodeProto], outputs: list[str], one: float = 1.0) -> onnx.ModelProto:
    """x [n, 4] -> ... with a Constant ``one`` and a weight W [4, 2] for MatMul nodes."""
    const = helper.make_node("Constant", [], ["one"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [one]))
    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 2], np.arange(8, dtype=np.float32).tolist())
    model = helper.make_model(
        helper.make_graph(
            [const, *nodes],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", "m"]) for o in outputs],
            [weight],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(model)
    return model


LOG1P = [helper.make_node("Add", ["one", "x"], ["s"]), helper.make_node("Log", ["s"], ["l"])]


def test_log1p_then_matmul_folds_and_drops_its_constant() -> None:
    model = graph([*LOG1P, helper.make_node("MatMul", ["l", "W"], ["y"])], ["y"])
    assert fold_log1p(model) == {"x"}
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    assert list(model.graph.node[0].input) == ["x", "W"]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.log1p(x)}
    )[0]
    np.testing.assert_allclose(y, np.log1p(x) @ np.arange(8, dtype=np.float32).reshape(4, 2), rtol=1e-6)


@pytest.mark.parametrize(
    ("nodes", "outputs", "one", "why"),
    [
        ([*LOG1P, helper.make_node("MatMul", ["l", "W"], ["y"])], ["y"], 2.0, "adds 2, not 1"),
        (
            [*LOG1P, helper.make_node("MatMul", ["l", "W"], ["y"]), helper.make_node("Neg", ["x"], ["z"])],
            ["y", "z"],
            1.0,
            "x is also used raw",
        ),
        (
            [*LOG1P, helper.make_node("Neg", ["s"], ["z"]), helper.make_node("MatMul", ["l", "W"], ["y"])],
            ["y", "z"],
            1.0,
            "x + 1 is also used",
        ),
        ([*LOG1P], ["l"], 1.0, "the log is a graph output"),
        ([helper.make_node("Add", ["one", "x"], ["s"]), helper.make_node("Exp", ["s"], ["l"])], ["l"], 1.0, "exp"),
    ],
)
def test_other_graphs_are_left_alone(nodes: list[onnx.NodeProto], outputs: list[str], one: float, why: str) -> None:
    model = graph(nodes, outputs, one)
    before = model.SerializeToString()
    assert fold_log1p(model) == frozenset(), why
    assert model.SerializeToString() == before
