"""preprocessing.metric_floors: a binding version whose recorded metric is below its floor (or not
recorded) is kept out at load with the reason; the other versions and models still load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from genoserve.binding.contract import BindingContract
from genoserve.runtime import registry
from genoserve.runtime.contract import ContractViolation
from genoserve.runtime.registry import ModelState
from genoserve.runtime.spec import ModelSpec
from tests.support.binding_models import match_model_onnx
from tests.support.models import write_model


def _spec(floors: dict[str, float], labels: list[str]) -> dict[str, Any]:
    return {
        "name": "floored",
        "family": "binding",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 101, 4]}],
        "outputs": [{"name": "logit", "dtype": "float32", "shape": [-1, len(labels)], "labels": labels}],
        "preprocessing": {"sequence_length": 101, "metric_floors": floors},
    }


def _write(root: Path, floors: dict[str, float], metrics: dict[int, dict[str, float]]) -> Path:
    directory = write_model(root, _spec(floors, ["CTCF"]), {v: match_model_onnx("GATTACA", 101) for v in metrics})
    document = yaml.safe_load((directory / "model.yaml").read_text())
    for entry in document["versions"]:
        entry["metrics"] = metrics[entry["version"]]
    (directory / "model.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return directory


def test_a_version_below_its_floor_is_kept_out_and_the_one_above_serves(tmp_path: Path) -> None:
    metrics = {1: {"auroc_CTCF": 0.497, "ism_ic_pearson": 0.95}, 2: {"auroc_CTCF": 0.93, "ism_ic_pearson": 0.85}}
    _write(tmp_path, {"auroc_{task}": 0.9, "ism_ic_pearson": 0.8}, metrics)
    first, second = registry.scan(tmp_path)
    assert first.state is ModelState.FAILED
    assert first.reason == "preprocessing.metric_floors: auroc_CTCF 0.497 is below its floor 0.9"
    assert second.state is ModelState.LOADING
    assert second.reason == ""
    assert registry.check_file(second) is None


def test_a_floored_metric_that_is_not_recorded_keeps_the_version_out(tmp_path: Path) -> None:
    _write(tmp_path, {"single_site_auroc": 0.99}, {1: {"auroc": 0.99}})
    [record] = registry.scan(tmp_path)
    assert record.state is ModelState.FAILED
    assert "single_site_auroc is not recorded (floor 0.99)" in record.reason


def test_task_placeholder_expands_to_every_output_label() -> None:
    spec = ModelSpec.model_validate(
        {
            **_spec({"auroc_{task}": 0.9, "auprc": 0.5}, ["CTCF", "GATA1"]),
            "versions": [{"version": 1, "sha256": "0" * 64}],
        }
    )
    contract = BindingContract.of(spec)
    assert contract.metric_floors == {"auroc_CTCF": 0.9, "auroc_GATA1": 0.9, "auprc": 0.5}
    assert contract.below_floor({"auroc_CTCF": 0.95, "auroc_GATA1": 0.95, "auprc": 0.5}) == ""
    reason = contract.below_floor({"auroc_CTCF": 0.95, "auroc_GATA1": 0.51, "auprc": 0.2})
    assert "auroc_GATA1 0.51 is below its floor 0.9" in reason
    assert "auprc 0.2 is below its floor 0.5" in reason


def test_a_misspelt_or_non_numeric_floor_block_breaks_the_contract() -> None:
    spec = ModelSpec.model_validate(
        {**_spec({}, ["CTCF"]), "versions": [{"version": 1, "sha256": "0" * 64}]}
        | {"preprocessing": {"sequence_length": 101, "metric_floors": {"auroc": "high"}}}
    )
    with pytest.raises(ContractViolation, match=r"preprocessing\.metric_floors\.auroc"):
        BindingContract.of(spec)


@pytest.mark.parametrize("name", ["deepbind-ctcf", "deepbind-gata1", "deepbind-spi1", "multitask-tf10"])
def test_committed_learned_binding_models_declare_floors_they_meet(name: str) -> None:
    models = Path(__file__).resolve().parents[3] / "models"
    [record] = [r for r in registry.scan(models, only=(name,))]
    assert record.contract is not None
    assert record.contract.metric_floors, f"{name} declares no metric floor"
    assert record.state is ModelState.LOADING, record.reason
