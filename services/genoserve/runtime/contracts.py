"""Each family's contract by family name, parsed once when the repository reads a model.

``platform`` is the generic family: any ONNX graph whose model.yaml declares its inputs and
outputs, served through ``Models/Infer`` only; it has no contract beyond model.yaml itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from genoserve.binding.contract import BindingContract
from genoserve.embedding.contract import EmbeddingContract
from genoserve.runtime.spec import ModelSpec
from genoserve.segmentation.contract import SegmentationContract
from genoserve.variants.contract import VariantsContract

PARSERS: dict[str, Callable[[ModelSpec], Any]] = {
    "binding": BindingContract.of,
    "segmentation": SegmentationContract.of,
    "embedding": EmbeddingContract.of,
    "variants": VariantsContract.of,
}


def contract_of(spec: ModelSpec) -> Any:
    """The parsed contract of ``spec``'s family (None for a family without one); raises
    ``genoserve.runtime.contract.ContractViolation`` naming every rule the model.yaml breaks."""
    parse = PARSERS.get(spec.family)
    return parse(spec) if parse is not None else None
