"""The committed platform test model is reproducible from its seed and computes its numpy definition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

from genoserve.training import platform_model

MODELS = Path(__file__).resolve().parents[3] / "models"


def test_regenerating_from_seed_gives_the_committed_bytes(tmp_path: Path) -> None:
    platform_model.main(["--out", str(tmp_path), "--seed", "0"])
    committed = MODELS / "platform-mlp"
    assert (tmp_path / "platform-mlp" / "1" / "model.onnx").read_bytes() == (
        committed / "1" / "model.onnx"
    ).read_bytes()
    assert yaml.safe_load((tmp_path / "platform-mlp" / "model.yaml").read_text()) == yaml.safe_load(
        (committed / "model.yaml").read_text()
    )


def test_committed_model_matches_numpy_within_recorded_error() -> None:
    meta = yaml.safe_load((MODELS / "platform-mlp" / "model.yaml").read_text())
    recorded = meta["versions"][0]["metrics"]["max_abs_error_vs_numpy"]
    session = ort.InferenceSession(
        str(MODELS / "platform-mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(42).normal(size=(64, 128)).astype(np.float32)
    got = session.run(None, {"x": x})[0]
    err = np.abs(got - platform_model.reference_forward(x, seed=0)).max()
    assert err <= max(recorded, 1e-6) * 10
    assert got.std() > 0.1, "the model should not be a constant function"
