"""The family contracts as one pydantic discriminated union on ``family``, parsed once when the
registry reads a model (``genoserve.runtime.registry.scan``, which ``genoserve models validate``
and ``models add`` run too).

``contract_of`` parses model.yaml's ``family`` with its ``preprocessing`` block as one
``FamilyPreprocessing`` (the member is picked by ``family``; each member refuses keys it does not
know), then checks the family's rules for the ports (``Preprocessing.contract``). A violation
names the field and the rule (``ContractViolation``); the registry keeps such a model out with
that reason.

``platform`` is the generic family: any ONNX graph whose model.yaml declares its inputs and
outputs, served through ``Models/Infer`` only; it has no ``preprocessing`` keys and no contract
beyond model.yaml itself.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from genoserve.binding.contract import BindingPreprocessing
from genoserve.embedding.contract import EmbeddingPreprocessing
from genoserve.runtime.contract import ContractViolation, Preprocessing
from genoserve.runtime.spec import ModelSpec
from genoserve.segmentation.contract import SegmentationPreprocessing
from genoserve.variants.contract import VariantsPreprocessing


class PlatformPreprocessing(Preprocessing):
    """The generic family's block: no keys (any key is refused); no contract (``contract`` is None)."""

    family: Literal["platform"] = "platform"


FamilyPreprocessing = Annotated[
    PlatformPreprocessing
    | BindingPreprocessing
    | SegmentationPreprocessing
    | EmbeddingPreprocessing
    | VariantsPreprocessing,
    Field(discriminator="family"),
]
_UNION: TypeAdapter[FamilyPreprocessing] = TypeAdapter(FamilyPreprocessing)


def parse_preprocessing(spec: ModelSpec) -> FamilyPreprocessing:
    """``spec.preprocessing`` as its family's typed block; ContractViolation naming each key that
    breaks a rule (``preprocessing.<key>: <rule>``)."""
    block = dict(spec.preprocessing)
    # ``family`` is model.yaml's own key (the union's tag), never one of the block's.
    problems = ["preprocessing.family: Extra inputs are not permitted"] if "family" in block else []
    block.pop("family", None)
    try:
        parsed = _UNION.validate_python({**block, "family": spec.family})
    except ValidationError as exc:
        problems += [_problem(e["loc"][1:], e["msg"]) for e in exc.errors()]  # loc[0]: the union's tag
    if problems:
        raise ContractViolation(spec, problems)
    return parsed


def _problem(loc: tuple[int | str, ...], msg: str) -> str:
    return f"preprocessing{''.join(f'.{p}' for p in loc)}: {msg}"


def contract_of(spec: ModelSpec) -> Any:
    """The parsed contract of ``spec``'s family (None for ``platform``); raises ContractViolation
    naming every rule the model.yaml breaks."""
    return parse_preprocessing(spec).contract(spec)
