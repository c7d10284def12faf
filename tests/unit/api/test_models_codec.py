"""ModelInfo as clients see it: model.yaml's preprocessing block travels with the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genoserve.api.codecs.models import model_info
from genoserve.runtime.batcher import BatcherConfig
from genoserve.runtime.live import ModelStatus
from genoserve.runtime.registry import ModelState, read_model

MODELS = Path(__file__).resolve().parents[3] / "models"


@pytest.mark.parametrize("name", ["scvi-sim-batch", "cellpose-nuclei", "deepbind-ctcf", "platform-mlp"])
def test_model_info_carries_the_preprocessing_block(name: str) -> None:
    [*_, record] = read_model(MODELS / name)
    assert record.spec is not None
    assert record.version is not None
    status = ModelStatus(name, str(record.version.version), record.spec, ModelState.READY, "", "cpu", BatcherConfig())
    info = model_info(status)
    block = record.spec.preprocessing
    assert set(info.preprocessing) == set(block)
    for key, value in block.items():
        assert info.preprocessing[key] == (value if isinstance(value, str) else json.dumps(value))
    if name == "scvi-sim-batch":
        assert info.preprocessing["batch_key"] == "batch"  # what predict embedding defaults --batch-key to
