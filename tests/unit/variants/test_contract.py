"""The variants contract read from model.yaml: what the shipped models declare, and every rule a
model.yaml can break named in one error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from genoserve.core.errors import InvalidArgument
from genoserve.runtime.spec import ModelSpec
from genoserve.variants.contract import GENOTYPES, VariantsContract

MODELS = Path(__file__).resolve().parents[3] / "models"


def _yaml(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((MODELS / name / "model.yaml").read_text())
    return data


@pytest.mark.parametrize(("name", "channels"), [("deepvariant-cnn-7ch", 7), ("deepvariant-cnn-6ch", 6)])
def test_shipped_models_state_their_pileup_layout(name: str, channels: int) -> None:
    contract = VariantsContract.of(ModelSpec.model_validate(_yaml(name)))
    assert (contract.input, contract.output, contract.channels) == ("pileup", "probabilities", channels)
    assert contract.classes == GENOTYPES == ("hom_ref", "het", "hom_alt")
    assert contract.layout.startswith(f"uint8 [100, 221, {channels}] (rows, columns, channels read_base, ")
    assert contract.channel_names[-1] == ("insert_size" if channels == 7 else "base_differs_from_ref")


def test_a_model_yaml_breaking_the_contract_is_refused_naming_each_rule() -> None:
    data = _yaml("deepvariant-cnn-7ch")
    data["inputs"][0]["shape"] = [-1, 221, 100, 7]
    data["outputs"][0]["labels"] = ["het", "hom_ref", "hom_alt"]
    with pytest.raises(InvalidArgument) as info:
        VariantsContract.of(ModelSpec.model_validate(data))
    assert info.value.violations[0].field == "model"
    assert "input pileup must be uint8 [batch, 100, 221, 6 or 7], is uint8 [-1, 221, 100, 7]" in info.value.message
    assert "output probabilities's labels must be ['hom_ref', 'het', 'hom_alt']" in info.value.message

    data = _yaml("deepvariant-cnn-7ch")
    data["preprocessing"]["channels"] = data["preprocessing"]["channels"][:6]
    data["preprocessing"]["layout"] = "NCHW"
    with pytest.raises(InvalidArgument, match=r"preprocessing.channels is .*; preprocessing.layout is 'NCHW'"):
        VariantsContract.of(ModelSpec.model_validate(data))


def test_a_model_of_another_family_is_not_a_variants_model() -> None:
    with pytest.raises(InvalidArgument, match="scvi-pbmc is a.* model, not a variants model"):
        VariantsContract.of(ModelSpec.model_validate(_yaml("scvi-pbmc")))
