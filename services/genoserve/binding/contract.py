"""What the binding family needs to know of a model: input length, tasks, strand default."""

from __future__ import annotations

from dataclasses import dataclass

from genoserve.core.errors import InvalidArgument
from genoserve.runtime.spec import ModelSpec


@dataclass(frozen=True)
class BindingContract:
    """A binding model takes one-hot ``input`` [batch, length, 4] and returns ``output`` logits
    [batch, tasks] for the strand it is given."""

    length: int
    tasks: list[str]
    default_strand: str
    input: str
    output: str

    @classmethod
    def of(cls, spec: ModelSpec) -> BindingContract:
        if spec.family != "binding":
            raise InvalidArgument.field("model", f"{spec.name} is a {spec.family} model, not a binding model")
        [x] = spec.inputs
        [y] = spec.outputs
        if len(x.shape) != 3 or x.shape[1] < 1 or x.shape[2] != 4:
            raise InvalidArgument.field("model", f"{spec.name}: input {x.name} is not [batch, length, 4]")
        tasks = list(y.labels) or [f"task{i}" for i in range(y.shape[-1])]
        return cls(x.shape[1], tasks, str(spec.preprocessing.get("default_strand", "max")), x.name, y.name)
