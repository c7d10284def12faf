"""What the binding family needs to know of a model: input length, tasks, strand default.

A binding model (model.yaml ``family: binding``) scores DNA:

- one input, float32 [batch, length, 4]: one-hot A, C, G, T (N: 0.25 in each), ``length`` fixed;
- one output, float32 [batch, tasks]: a logit per task (``labels`` name the tasks);
- ``preprocessing`` (``BindingPreprocessing``): ``default_strand``, the documented constants and
  ``metric_floors``: the least value of a recorded metric for a version to serve. A version whose
  ``metrics`` hold a floored metric below its floor, or lack it, is kept out at load with the
  reason (``BindingContract.below_floor``). ``{task}`` in a name stands for each output label, so
  ``auroc_{task}: 0.9`` floors every served task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import Field

from genoserve.runtime.contract import ContractViolation, Preprocessing, family_contract, single_ports
from genoserve.runtime.spec import ModelSpec


class BindingPreprocessing(Preprocessing):
    family: Literal["binding"] = "binding"
    #: The input length; when given it must equal the input's fixed length.
    sequence_length: int | None = None
    #: The one-hot order of the input's last axis (the only one the family encodes).
    alphabet: Literal["ACGT"] = "ACGT"
    #: The base encoded as uniform (0.25 in each channel; ``genoserve.binding.encoding``).
    unknown: Literal["N"] = "N"
    #: Strand scoring when a request does not choose: forward only, or the max / mean of both.
    default_strand: Literal["forward", "max", "mean"] = "max"
    #: Metric name (``{task}``: each output label) -> the least recorded value that may serve.
    metric_floors: dict[str, float] = Field(default_factory=dict)

    def contract(self, spec: ModelSpec) -> BindingContract:
        return BindingContract.checked(spec, self)


@dataclass(frozen=True)
class BindingContract:
    """A binding model takes one-hot ``input`` [batch, length, 4] and returns ``output`` logits
    [batch, tasks] for the strand it is given."""

    FAMILY: ClassVar[str] = "binding"

    length: int
    tasks: list[str]
    default_strand: str
    input: str
    output: str
    #: Metric name -> floor, with ``{task}`` expanded to each task.
    metric_floors: dict[str, float] = field(default_factory=dict)

    def below_floor(self, metrics: Mapping[str, float]) -> str:
        """The reason a version with these recorded ``metrics`` may not serve ("" when it may):
        each floored metric that is missing or below its floor."""
        problems = []
        for name, floor in self.metric_floors.items():
            if name not in metrics:
                problems.append(f"{name} is not recorded (floor {floor:g})")
            elif metrics[name] < floor:
                problems.append(f"{name} {metrics[name]:g} is below its floor {floor:g}")
        if not problems:
            return ""
        return "preprocessing.metric_floors: " + "; ".join(problems)

    @classmethod
    def of(cls, spec: ModelSpec) -> BindingContract:
        """The contract of a binding model.yaml, parsed as the registry parses it (for tools and
        tests); ContractViolation naming every broken rule."""
        return family_contract(cls, spec)

    @classmethod
    def checked(cls, spec: ModelSpec, pre: BindingPreprocessing) -> BindingContract:
        """The rules for the ports of ``spec``, whose ``preprocessing`` parsed as ``pre``."""
        x, y = single_ports(spec)
        problems: list[str] = []
        if x.dtype != "float32" or len(x.shape) != 3 or x.shape[1] < 1 or x.shape[2] != 4:
            problems.append(f"input {x.name} must be float32 [batch, length, 4] with a fixed length, "
                            f"is {x.dtype} {list(x.shape)}")  # fmt: skip
        elif pre.sequence_length is not None and pre.sequence_length != x.shape[1]:
            problems.append(
                f"preprocessing.sequence_length {pre.sequence_length} is not the input's length {x.shape[1]}"
            )
        if y.dtype != "float32" or len(y.shape) != 2 or y.shape[1] < 1:
            problems.append(f"output {y.name} must be float32 [batch, tasks] with a fixed task count, "
                            f"is {y.dtype} {list(y.shape)}")  # fmt: skip
        if problems:
            raise ContractViolation(spec, problems)
        tasks = list(y.labels) or [f"task{i}" for i in range(y.shape[-1])]
        floors: dict[str, float] = {}
        for name, floor in pre.metric_floors.items():
            for task in tasks if "{task}" in name else [""]:
                floors[name.replace("{task}", task)] = floor
        return cls(x.shape[1], tasks, pre.default_strand, x.name, y.name, floors)
