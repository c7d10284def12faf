"""What the segmentation family needs to know of a model, read from its model.yaml.

A segmentation model (model.yaml ``family: segmentation``) is a Cellpose-style network:

- one input, float32 [batch, channels, H, W] with H and W dynamic: the image, normalised per
  channel to its ``normalize_percentiles`` (0 and 1 at the 1st and 99th percentiles by default);
- one output, float32 [batch, 3, H, W]: the dY and dX flows and the cell-probability logit;
- ``preprocessing`` (``SegmentationPreprocessing``): tiling and padding, the training data's cell
  diameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from genoserve.core.errors import InvalidArgument
from genoserve.runtime.contract import ContractViolation, Preprocessing, family_contract, single_ports
from genoserve.runtime.spec import ModelSpec


class SegmentationPreprocessing(Preprocessing):
    family: Literal["segmentation"] = "segmentation"
    #: Tiles the network runs on (pixels, square); a multiple of ``size_multiple``.
    tile: int = Field(256, ge=8)
    #: Overlap of neighbouring tiles, as a fraction of the tile.
    tile_overlap: float = Field(0.1, ge=0.0, lt=0.5)
    #: Mean cell diameter (pixels) of the training data: images are rescaled to it when a
    #: request gives its cells' diameter.
    diameter: float = Field(17.0, gt=0)
    #: Per-channel percentiles mapped to 0 and 1 before the network.
    normalize_percentiles: tuple[float, float] = (1.0, 99.0)
    #: H and W of the network's input must be multiples of this (a U-Net with three 2x poolings: 8).
    size_multiple: int = Field(8, ge=1)
    #: Zero pixels around the (rescaled) image before it is tiled, as Cellpose pads it
    #: (``transforms.get_pad_yx``): ``pad`` on each side plus what makes H and W multiples of
    #: 2 * ``pad``, split evenly before and after; 0 (the default, as before the setting existed):
    #: none. Cellpose models (the importer writes it) take 8.
    pad: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _rules(self) -> SegmentationPreprocessing:
        lo, hi = self.normalize_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"normalize_percentiles must be 0 <= lower < upper <= 100, got [{lo}, {hi}]")
        if self.tile % self.size_multiple:
            raise ValueError(f"tile {self.tile} is not a multiple of size_multiple {self.size_multiple}")
        return self

    def contract(self, spec: ModelSpec) -> SegmentationContract:
        return SegmentationContract.checked(spec, self)


@dataclass(frozen=True)
class SegmentationContract:
    """A segmentation model takes normalised images ``input`` float32 [batch, channels, H, W]
    (H, W dynamic) and returns ``output`` float32 [batch, 3, H, W]: dY, dX flows and the cell
    probability logit. ``tile`` is the size tiles are cut to; ``diameter`` the mean cell
    diameter (pixels) of the training data, to which images are rescaled when a diameter is given;
    ``size_multiple`` what the network's H and W must be multiples of; ``percentiles`` the
    normalisation's; ``pad`` the zeros around the rescaled image before tiling (Cellpose's).
    """

    FAMILY: ClassVar[str] = "segmentation"

    input: str
    output: str
    channels: int
    tile: int
    overlap: float
    diameter: float
    size_multiple: int = 8
    percentiles: tuple[float, float] = (1.0, 99.0)
    pad: int = 0

    @classmethod
    def of(cls, spec: ModelSpec) -> SegmentationContract:
        """The contract of a segmentation model.yaml, parsed as the registry parses it (for tools
        and tests); ContractViolation naming every broken rule."""
        return family_contract(cls, spec)

    @classmethod
    def checked(cls, spec: ModelSpec, pre: SegmentationPreprocessing) -> SegmentationContract:
        """The rules for the ports of ``spec``, whose ``preprocessing`` parsed as ``pre``."""
        x, y = single_ports(spec)
        problems: list[str] = []
        if x.dtype != "float32" or len(x.shape) != 4 or x.shape[1] < 1:
            problems.append(f"input {x.name} must be float32 [batch, channels, H, W] with a fixed channel count, "
                            f"is {x.dtype} {list(x.shape)}")  # fmt: skip
        if y.dtype != "float32" or len(y.shape) != 4 or y.shape[1] != 3:
            problems.append(f"output {y.name} must be float32 [batch, 3, H, W] (dY, dX, cell probability), "
                            f"is {y.dtype} {list(y.shape)}")  # fmt: skip
        if problems:
            raise ContractViolation(spec, problems)
        return cls(
            x.name, y.name, int(x.shape[1]), pre.tile, pre.tile_overlap, pre.diameter, pre.size_multiple,
            pre.normalize_percentiles, pre.pad,
        )  # fmt: skip

    def check_network_input(self, shape: Sequence[int], field: str) -> None:
        """The rule for arrays sent to the network itself (the generic Models.Infer): H and W
        multiples of ``size_multiple``, and at most one ``tile`` (the network's cost grows with the
        image; Segmentation.Segment cuts larger images into tiles). Other ranks are left to the
        declared-input check."""
        if len(shape) != 4:
            return
        h, w = int(shape[2]), int(shape[3])
        m = self.size_multiple
        if h % m or w % m or not (m <= h <= self.tile and m <= w <= self.tile):
            raise InvalidArgument.field(
                field,
                f"height and width must be multiples of {m} between {m} and {self.tile} (the model's tile; "
                f"Segmentation.Segment tiles larger images), got {h}x{w}",
            )
