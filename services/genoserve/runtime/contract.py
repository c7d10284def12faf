"""What every family contract shares: a typed ``preprocessing`` block and one error for a
model.yaml that breaks its family's rules.

Each family's ``preprocessing`` block is one member of a pydantic discriminated union on
``family`` (``genoserve.runtime.contracts``), parsed once, when the registry reads the model,
together with the family's rules for the ports: a model that breaks them is kept out with the
reason and never served. The servicers and job kinds take the parsed contract from the model's
registry record (``ModelVersionRecord.contract``, ``LoadedModel.contract``).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from genoserve.core.errors import InvalidArgument, ModelLoadError
from genoserve.runtime.spec import ModelSpec, TensorSpec

C = TypeVar("C")


class Preprocessing(BaseModel):
    """A family's ``preprocessing:`` block: unknown keys are refused (a misspelt key is an error,
    not a silent default). Each family's block adds ``family: Literal[<family>]``, the union's
    tag (model.yaml's ``family``, not a key of the block)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def contract(self, spec: ModelSpec) -> Any:
        """The family's contract of ``spec`` with this block: the rules for the ports checked,
        ContractViolation naming each that ``spec`` breaks; None for a family without one."""
        return None


class ContractViolation(ModelLoadError):
    """model.yaml breaks its family's contract (FAILED_PRECONDITION: the model cannot serve)."""

    def __init__(self, spec: ModelSpec, problems: list[str]) -> None:
        super().__init__(f"model.yaml breaks the {spec.family} contract: " + "; ".join(problems))
        self.problems = problems


def family_contract(kind: type[C], spec: ModelSpec) -> C:
    """``spec``'s contract as the family ``kind`` (e.g. ``BindingContract``), parsed as the
    registry parses it (``genoserve.runtime.contracts.contract_of``): for tools and tests that
    read a model.yaml themselves. INVALID_ARGUMENT (field ``model``) when the model is of another
    family; ContractViolation naming each broken rule."""
    family = _family(kind)
    if spec.family != family:
        raise InvalidArgument.field("model", f"{spec.name} {other_family(spec.family, family)}")
    from genoserve.runtime.contracts import contract_of  # the union imports every family's module

    contract = contract_of(spec)
    assert isinstance(contract, kind)
    return contract


def expect_contract(kind: type[C], contract: object, spec: ModelSpec, reason: str = "") -> C:
    """``contract`` (the registry's, for ``spec``) as the family ``kind``: INVALID_ARGUMENT (field
    ``model``) when the model is of another family, FAILED_PRECONDITION with ``reason`` (why the
    registry kept it out) when it has no contract of its family."""
    if isinstance(contract, kind):
        return contract
    family = _family(kind)
    if spec.family != family:
        raise InvalidArgument.field("model", f"{spec.name} {other_family(spec.family, family)}")
    raise ModelLoadError(reason or f"model {spec.name} has no parsed {family} contract")


def _family(kind: type[Any]) -> str:
    return str(getattr(kind, "FAMILY", kind.__name__))


def other_family(have: str, want: str) -> str:
    """ "is a segmentation model, not an embedding model"."""
    return f"is {_article(have)} {have} model, not {_article(want)} {want} model"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def single_ports(spec: ModelSpec) -> tuple[TensorSpec, TensorSpec]:
    """The one input and the one output of a family that takes and gives one tensor each."""
    if len(spec.inputs) != 1 or len(spec.outputs) != 1:
        raise ContractViolation(
            spec, [f"needs one input and one output (has {len(spec.inputs)} and {len(spec.outputs)})"]
        )
    return spec.inputs[0], spec.outputs[0]
