"""The committed cellpose-nuclei model: its recorded metrics hold on fresh data, and the quick
training path exports a model the registry loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

from genoserve.runtime.registry import read_spec
from genoserve.segmentation.contract import SegmentationContract
from genoserve.training.segmentation import train
from genoserve.training.segmentation.evaluate import evaluate_real, evaluate_synthetic, onnx_forward

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "models" / "cellpose-nuclei"


def recorded() -> dict[str, float]:
    meta = yaml.safe_load((MODEL / "model.yaml").read_text())
    return dict(meta["versions"][-1]["metrics"])


def test_committed_model_reaches_its_recorded_ap_on_the_real_image() -> None:
    forward = onnx_forward((MODEL / "1" / "model.onnx").read_bytes())
    contract = SegmentationContract.of(read_spec(MODEL))
    got = evaluate_real(forward, contract, REPO)
    for key in ("real_ap50", "real_ap75", "real_ap90"):
        assert abs(got[key] - recorded()[key]) < 1e-6, key


def test_committed_model_holds_its_synthetic_ap_on_fresh_images() -> None:
    forward = onnx_forward((MODEL / "1" / "model.onnx").read_bytes())
    contract = SegmentationContract.of(read_spec(MODEL))
    got = evaluate_synthetic(forward, contract, seed=424242, count=6)  # not the recorded seed
    assert got["synthetic_ap50"] >= recorded()["synthetic_ap50"] - 0.06


def test_quick_training_exports_a_loadable_onnx_with_dynamic_size(tmp_path: Path) -> None:
    train.main(["--out", str(tmp_path), "--quick"])
    spec = read_spec(tmp_path / "cellpose-nuclei")
    assert spec.family == "segmentation"
    session = ort.InferenceSession(str(tmp_path / "cellpose-nuclei" / "1" / "model.onnx"))
    for shape in ((1, 1, 64, 64), (3, 1, 256, 128)):
        out = session.run(None, {"image": np.zeros(shape, np.float32)})[0]
        assert out.shape == (shape[0], 3, shape[2], shape[3])
