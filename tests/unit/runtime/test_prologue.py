"""Folding an encoder's leading log1p out of its graph: which graphs fold, and that the folded
session given log1p(x) (or ``LoadedModel`` given x) answers as the committed graph given x."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from genoserve.core.errors import InternalError
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.model import LoadedModel
from genoserve.runtime.prologue import fold_log1p, rewrite, split_concat_gemm
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
    graph = onnx.load(str(path))
    assert rewrite(graph) == ({"counts"}, True)
    rewritten = [n.op_type for n in graph.graph.node]
    assert "Log" not in rewritten
    assert "Concat" not in rewritten  # scvi-sim-batch: counts and batch each into their own Gemm
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
    unchanged = RuntimeSettings(device="cpu", graph_rewrites=False)
    plain = LoadedModel(record.spec, record.version, OrtSession(record.onnx_path, unchanged), 64)
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


def concat_gemm(trans_b: int, beta: float = 1.0) -> onnx.ModelProto:
    """y = Gemm(Concat(a [n, 3], b [n, 2], axis=1), W, c) with W [5, 4] (or [4, 5] transposed)."""
    rng = np.random.default_rng(7)
    weight = rng.normal(size=(4, 5) if trans_b else (5, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
        helper.make_node("Gemm", ["ab", "W", "c"], ["y"], transB=trans_b, beta=beta),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [
                helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 2]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
            [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "c")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(("trans_b", "beta"), [(0, 1.0), (1, 1.0), (1, 0.5)])
def test_concat_into_gemm_is_split_by_input_with_the_same_result(trans_b: int, beta: float) -> None:
    model = concat_gemm(trans_b, beta)
    rng = np.random.default_rng(8)
    feeds = {"a": rng.normal(size=(6, 3)).astype(np.float32), "b": rng.normal(size=(6, 2)).astype(np.float32)}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert split_concat_gemm(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Gemm", "Add"]
    assert "W" not in {i.name for i in model.graph.initializer}
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)


def test_concat_used_elsewhere_or_on_another_axis_is_not_split() -> None:
    model = concat_gemm(1)
    model.graph.output.append(helper.make_tensor_value_info("ab", TensorProto.FLOAT, ["n", 5]))
    assert split_concat_gemm(model) == 0
    model = concat_gemm(1)
    model.graph.node[0].attribute[0].i = 0  # axis 0: rows, not features
    assert split_concat_gemm(model) == 0
    model = concat_gemm(1)
    del model.graph.node[0].input[1]  # a Concat of one input (a copy), its weight cut to match
    weight = numpy_helper.to_array(model.graph.initializer[0])[:, :3]
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weight), "W"))
    assert split_concat_gemm(model) == 0


def test_a_graph_with_external_weights_loads_unrewritten(tmp_path: Path) -> None:
    """Its bytes alone would not hold the weights: the session loads the file as it is."""
    model = onnx.load(str(MODELS / "scvi-pbmc" / "1" / "model.onnx"))
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    session = OrtSession(path, SETTINGS)
    assert session.log1p_inputs == frozenset()
    x = counts(np.random.default_rng(2), 5, 765)
    full = ort.InferenceSession(str(MODELS / "scvi-pbmc" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run({"counts": x})["latent_mean"], full.run(["latent_mean"], {"counts": x})[0])


def test_a_rewrite_that_changes_the_answers_is_not_served(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every rewritten graph is compared with the graph as it is on a made-up input at load; one
    that disagrees (here: log1p removed but not reported, so no caller would take it) is dropped
    with a warning and the graph serves as it is."""
    from genoserve.runtime import session as session_module

    def forgets_to_report(model: onnx.ModelProto, log1p: bool = True) -> tuple[frozenset[str], bool]:
        fold_log1p(model)
        return frozenset(), True

    monkeypatch.setattr(session_module, "rewrite", forgets_to_report)
    path = MODELS / "scvi-pbmc" / "1" / "model.onnx"
    with caplog.at_level("WARNING", logger="genoserve.runtime.session"):
        served = OrtSession(path, SETTINGS)
    assert "disagrees with the graph (output latent_mean differs)" in caplog.text
    assert served.log1p_inputs == frozenset()
    x = counts(np.random.default_rng(3), 5, 765)
    full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(served.run({"counts": x})["latent_mean"], full.run(["latent_mean"], {"counts": x})[0])
