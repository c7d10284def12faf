"""The variants contract read from model.yaml: what the shipped models declare, and every rule a
model.yaml can break named in one error (ContractViolation: the model cannot serve)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from genoserve.core.errors import InvalidArgument
from genoserve.runtime.contract import ContractViolation
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
    assert contract.layout.endswith("insert_size)" if channels == 7 else "base_differs_from_ref)")


def test_a_model_yaml_breaking_the_contract_is_refused_naming_each_rule() -> None:
    data = _yaml("deepvariant-cnn-7ch")
    data["inputs"][0]["shape"] = [-1, 221, 100, 7]
    data["outputs"][0]["labels"] = ["het", "hom_ref", "hom_alt"]
    with pytest.raises(ContractViolation) as info:
        VariantsContract.of(ModelSpec.model_validate(data))
    assert info.value.problems == [
        "input pileup must be uint8 [batch, 100, 221, 6 or 7] (NHWC pileups), is uint8 [-1, 221, 100, 7]",
        "output probabilities labels must be ['hom_ref', 'het', 'hom_alt'] in that order, are "
        "['het', 'hom_ref', 'hom_alt']",
    ]
    assert info.value.code == "FAILED_PRECONDITION"

    data = _yaml("deepvariant-cnn-7ch")
    data["preprocessing"]["channels"] = data["preprocessing"]["channels"][:6]
    with pytest.raises(ContractViolation, match=r"preprocessing.channels \['read_base', .*\] are not DeepVariant's 7"):
        VariantsContract.of(ModelSpec.model_validate(data))
    data["preprocessing"] = {"layout": "NCHW", "width": 220, "channel": []}
    with pytest.raises(ContractViolation) as info:
        VariantsContract.of(ModelSpec.model_validate(data))
    assert [p.split(":")[0] for p in info.value.problems] == [
        "preprocessing.width",
        "preprocessing.layout",
        "preprocessing.channel",
    ]


def test_a_model_of_another_family_is_not_a_variants_model() -> None:
    with pytest.raises(InvalidArgument, match=r"scvi-pbmc is an? \w+ model, not a variants model"):
        VariantsContract.of(ModelSpec.model_validate(_yaml("scvi-pbmc")))
