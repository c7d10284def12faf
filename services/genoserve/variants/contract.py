"""What the variants family needs to know of a model, read from its model.yaml.

A variants model (model.yaml ``family: variants``) is a DeepVariant-style genotype classifier:

- one input, uint8 [batch, 100, 221, channels] (NHWC: pileup rows, columns, channels) with 6 or 7
  channels in DeepVariant's order (``examples.CHANNELS_6``; 7 adds ``insert_size``);
- one output, float32 [batch, 3]: the genotype probabilities, in the order of ``GENOTYPES`` (the
  output's ``labels``, when given, must name them in that order);
- ``preprocessing`` (``VariantsPreprocessing``) may restate the pileup layout; what it states
  must agree with the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from genoserve.runtime.contract import ContractViolation, Preprocessing, family_contract, single_ports
from genoserve.runtime.spec import ModelSpec
from genoserve.variants.examples import CHANNELS_6, CHANNELS_7
from genoserve.variants.sites import expected_layout

#: The genotype classes of the output, in its order: P(0/0), P(0/1), P(1/1).
GENOTYPES = ("hom_ref", "het", "hom_alt")
HEIGHT, WIDTH = 100, 221


class VariantsPreprocessing(Preprocessing):
    family: Literal["variants"] = "variants"
    #: Pileup rows (5 reference rows, then reads) and columns (the candidate in the middle).
    height: Literal[100] = 100
    width: Literal[221] = 221
    #: When given, the channel names in order: DeepVariant's for the input's channel count.
    channels: tuple[str, ...] | None = None
    #: Axis order of the input: batch, rows, columns, channels.
    layout: Literal["NHWC"] = "NHWC"

    def contract(self, spec: ModelSpec) -> VariantsContract:
        return VariantsContract.checked(spec, self)


def channel_names(channels: int) -> tuple[str, ...]:
    """DeepVariant's channel names for a pileup of ``channels`` (6 or 7) channels."""
    return CHANNELS_7 if channels == 7 else CHANNELS_6


@dataclass(frozen=True)
class VariantsContract:
    """A variants model takes pileups ``input`` uint8 [batch, 100, 221, ``channels``] and returns
    ``output`` float32 [batch, 3]: the probabilities of ``classes`` (``GENOTYPES``)."""

    FAMILY: ClassVar[str] = "variants"

    input: str
    output: str
    channels: int
    classes: tuple[str, ...] = GENOTYPES

    @property
    def layout(self) -> str:
        """The pileup layout in words, as errors state it: ``uint8 [100, 221, 7] (rows, ...)``."""
        return expected_layout(self.channels)

    @classmethod
    def of(cls, spec: ModelSpec) -> VariantsContract:
        """The contract of a variants model.yaml, parsed as the registry parses it (for tools and
        tests); ContractViolation naming every broken rule."""
        return family_contract(cls, spec)

    @classmethod
    def checked(cls, spec: ModelSpec, pre: VariantsPreprocessing) -> VariantsContract:
        """The rules for the ports of ``spec``, whose ``preprocessing`` parsed as ``pre``."""
        x, y = single_ports(spec)
        problems: list[str] = []
        if x.dtype != "uint8" or len(x.shape) != 4 or x.shape[1:3] != (HEIGHT, WIDTH) or x.shape[3] not in (6, 7):
            problems.append(f"input {x.name} must be uint8 [batch, {HEIGHT}, {WIDTH}, 6 or 7] (NHWC pileups), "
                            f"is {x.dtype} {list(x.shape)}")  # fmt: skip
        elif pre.channels is not None and pre.channels != channel_names(x.shape[3]):
            problems.append(f"preprocessing.channels {list(pre.channels)} are not DeepVariant's {x.shape[3]} "
                            f"channels {list(channel_names(x.shape[3]))}")  # fmt: skip
        if y.dtype != "float32" or len(y.shape) != 2 or y.shape[1] != len(GENOTYPES):
            problems.append(f"output {y.name} must be float32 [batch, {len(GENOTYPES)}] (genotype probabilities), "
                            f"is {y.dtype} {list(y.shape)}")  # fmt: skip
        elif y.labels and y.labels != GENOTYPES:
            problems.append(f"output {y.name} labels must be {list(GENOTYPES)} in that order, are {list(y.labels)}")
        if problems:
            raise ContractViolation(spec, problems)
        return cls(x.name, y.name, x.shape[3])
