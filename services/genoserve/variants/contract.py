"""What the variants family needs to know of a model, read from its model.yaml.

A variants model (model.yaml ``family: variants``) is a DeepVariant-style genotype classifier:

- one input, uint8 [batch, 100, 221, channels] (NHWC: pileup rows, columns, channels) with 6 or 7
  channels in DeepVariant's order (``examples.CHANNELS_6``; 7 adds ``insert_size``);
- one output, float32 [batch, 3]: the genotype probabilities, in the order of ``GENOTYPES`` (the
  output's ``labels``, when given, must name them in that order);
- ``preprocessing`` may restate the input: ``height``, ``width``, ``channels`` (the channel names)
  and ``layout`` (``NHWC``); what it states must agree with the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from genoserve.core.errors import InvalidArgument
from genoserve.runtime.spec import ModelSpec
from genoserve.variants.examples import CHANNELS_6, CHANNELS_7
from genoserve.variants.sites import expected_layout

#: The genotype classes of the output, in its order: P(0/0), P(0/1), P(1/1).
GENOTYPES = ("hom_ref", "het", "hom_alt")
HEIGHT, WIDTH = 100, 221
LAYOUT = "NHWC"


@dataclass(frozen=True)
class VariantsContract:
    """A variants model takes pileups ``input`` uint8 [batch, 100, 221, ``channels``] and returns
    ``output`` float32 [batch, 3]: the probabilities of ``classes`` (``GENOTYPES``)."""

    FAMILY: ClassVar[str] = "variants"

    input: str
    output: str
    channels: int
    classes: tuple[str, ...] = GENOTYPES
    height: int = HEIGHT
    width: int = WIDTH

    @property
    def channel_names(self) -> tuple[str, ...]:
        return CHANNELS_7 if self.channels == 7 else CHANNELS_6

    @property
    def layout(self) -> str:
        """The pileup layout in words, as errors state it: ``uint8 [100, 221, 7] (rows, ...)``."""
        return expected_layout(self.channels)

    @classmethod
    def of(cls, spec: ModelSpec) -> VariantsContract:
        """The contract of a variants model.yaml; INVALID_ARGUMENT (field ``model``) naming every
        rule it breaks."""
        if spec.family != cls.FAMILY:
            raise InvalidArgument.field("model", f"{spec.name} is a {spec.family} model, not a variants model")
        if len(spec.inputs) != 1 or len(spec.outputs) != 1:
            raise InvalidArgument.field(
                "model",
                f"{spec.name}: a variants model has one input and one output "
                f"(has {len(spec.inputs)} and {len(spec.outputs)})",
            )
        [x] = spec.inputs
        [y] = spec.outputs
        problems: list[str] = []
        if x.dtype != "uint8" or len(x.shape) != 4 or x.shape[1:3] != (HEIGHT, WIDTH) or x.shape[3] not in (6, 7):
            problems.append(
                f"input {x.name} must be uint8 [batch, {HEIGHT}, {WIDTH}, 6 or 7], is {x.dtype} {list(x.shape)}"
            )
        if y.dtype != "float32" or len(y.shape) != 2 or y.shape[1] != len(GENOTYPES):
            problems.append(f"output {y.name} must be float32 [batch, {len(GENOTYPES)}], is {y.dtype} {list(y.shape)}")
        elif y.labels and tuple(y.labels) != GENOTYPES:
            problems.append(f"output {y.name}'s labels must be {list(GENOTYPES)}, are {list(y.labels)}")
        if not problems:
            problems += _preprocessing_problems(spec.preprocessing, x.shape[3])
        if problems:
            raise InvalidArgument.field("model", f"{spec.name}: " + "; ".join(problems))
        return cls(x.name, y.name, x.shape[3])


def _preprocessing_problems(pre: dict[str, Any], channels: int) -> list[str]:
    """What ``preprocessing`` states about the pileups and the input contradicts."""
    names = CHANNELS_7 if channels == 7 else CHANNELS_6
    stated = {"height": HEIGHT, "width": WIDTH, "channels": list(names), "layout": LAYOUT}
    return [
        f"preprocessing.{key} is {pre[key]!r}, the input's is {want!r}"
        for key, want in stated.items()
        if key in pre and pre[key] != want
    ]
