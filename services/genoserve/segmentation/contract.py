"""What the segmentation family needs to know of a model, read from its model.yaml."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from genoserve.core.errors import InvalidArgument
from genoserve.runtime.spec import ModelSpec


@dataclass(frozen=True)
class SegmentationContract:
    """A segmentation model takes normalised images ``input`` float32 [batch, channels, H, W]
    (H, W dynamic) and returns ``output`` float32 [batch, 3, H, W]: dY, dX flows and the cell
    probability logit. ``tile`` is the size tiles are cut to; ``diameter`` the mean cell
    diameter (pixels) of the training data, to which images are rescaled when a diameter is given;
    ``size_multiple`` (model.yaml ``preprocessing.size_multiple``, default 8: a U-Net with three 2x
    poolings) what the network's H and W must be multiples of.
    """

    input: str
    output: str
    channels: int
    tile: int
    overlap: float
    diameter: float
    size_multiple: int = 8

    @classmethod
    def of(cls, spec: ModelSpec) -> SegmentationContract:
        if spec.family != "segmentation":
            raise InvalidArgument.field("model", f"{spec.name} is a {spec.family} model, not a segmentation model")
        [x] = spec.inputs
        [y] = spec.outputs
        if len(x.shape) != 4 or x.shape[1] < 1:
            raise InvalidArgument.field("model", f"{spec.name}: input {x.name} is not [batch, channels, H, W]")
        if len(y.shape) != 4 or y.shape[1] != 3:
            raise InvalidArgument.field("model", f"{spec.name}: output {y.name} is not [batch, 3, H, W]")
        pre = spec.preprocessing
        tile, multiple = int(pre.get("tile", 256)), int(pre.get("size_multiple", 8))
        if multiple < 1 or tile < multiple or tile % multiple:
            raise InvalidArgument.field(
                "model", f"{spec.name}: preprocessing.tile {tile} is not a multiple of size_multiple {multiple}"
            )
        return cls(
            x.name, y.name, int(x.shape[1]), tile, float(pre.get("tile_overlap", 0.1)),
            float(pre.get("diameter", 17.0)), multiple,
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
