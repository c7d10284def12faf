"""A worker's model sessions: loaded on first use, the least recently used dropped past the cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genoserve.core.settings import RuntimeSettings, Settings
from genoserve.jobs.local_models import LocalModels

MODELS = Path(__file__).resolve().parents[3] / "models"


def test_the_least_recently_used_model_is_dropped_past_the_cap_and_loaded_again_when_needed() -> None:
    models = LocalModels(RuntimeSettings(model_dir=MODELS), max_loaded=2)
    mlp = models.get("platform-mlp", "1")
    assert models.get("platform-mlp", "1") is mlp  # kept: the same session
    models.get("pwm-ctcf", "1")
    models.get("platform-mlp", "1")  # used again: now the most recent
    models.get("pwm-gata1", "1")
    assert models.loaded() == [("platform-mlp", "1"), ("pwm-gata1", "1")]  # pwm-ctcf dropped
    models.get("pwm-spi1", "1")
    assert models.loaded() == [("pwm-gata1", "1"), ("pwm-spi1", "1")]
    x = np.random.default_rng(0).normal(size=(3, 128)).astype(np.float32)
    before = mlp.infer_sync({"x": x})["y"]  # a shard holding a dropped model finishes on it
    again = models.get("platform-mlp", "1")
    assert again is not mlp
    np.testing.assert_array_equal(again.infer_sync({"x": x})["y"], before)


def test_the_worker_setting_bounds_the_loaded_models() -> None:
    assert Settings().worker.max_loaded_models == 8
    assert Settings.model_validate({"worker": {"max_loaded_models": 2}}).worker.max_loaded_models == 2
