"""What every family contract shares: a typed ``preprocessing`` block and one error for a
model.yaml that breaks its family's rules.

Each family's contract (``genoserve.<family>.contract``) is parsed once, when the repository
reads the model (``genoserve.runtime.contracts``): a model that breaks it is kept out with the
reason and never served. The servicers take the parsed contract from the loaded model.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from genoserve.core.errors import InvalidArgument, ModelLoadError
from genoserve.runtime.spec import ModelSpec, TensorSpec


class Preprocessing(BaseModel):
    """A family's ``preprocessing:`` block: unknown keys are refused (a misspelt key is an error,
    not a silent default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=Preprocessing)


class ContractViolation(ModelLoadError):
    """model.yaml breaks its family's contract (FAILED_PRECONDITION: the model cannot serve)."""

    def __init__(self, spec: ModelSpec, problems: list[str]) -> None:
        super().__init__(f"model.yaml breaks the {spec.family} contract: " + "; ".join(problems))
        self.problems = problems


def preprocessing(kind: type[P], spec: ModelSpec, family: str) -> P:
    """``spec.preprocessing`` as the ``family``'s typed block; ContractViolation naming each key,
    INVALID_ARGUMENT (field ``model``) when the model is of another family."""
    if spec.family != family:
        raise InvalidArgument.field("model", f"{spec.name} {other_family(spec.family, family)}")
    try:
        return kind.model_validate(spec.preprocessing)
    except ValidationError as exc:
        problems = [
            f"preprocessing.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}".replace(
                "preprocessing.: ", "preprocessing: "
            )
            for e in exc.errors()
        ]
        raise ContractViolation(spec, problems) from exc


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
