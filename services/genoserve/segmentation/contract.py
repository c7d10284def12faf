"""What the segmentation family needs to know of a model, read from its model.yaml."""

from __future__ import annotations

from dataclasses import dataclass

from genoserve.core.errors import InvalidArgument
from genoserve.runtime.spec import ModelSpec


@dataclass(frozen=True)
class SegmentationContract:
    """A segmentation model takes normalised images ``input`` float32 [batch, channels, H, W]
    (H, W dynamic) and returns ``output`` float32 [batch, 3, H, W]: dY, dX flows and the cell
    probability logit. ``tile`` is the size tiles are cut to; ``diameter`` the mean cell
    diameter (pixels) of the training data, to which images are rescaled when a diameter is given.
    """

    input: str
    output: str
    channels: int
    tile: int
    overlap: float
    diameter: float

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
        return cls(
            x.name, y.name, int(x.shape[1]), int(pre.get("tile", 256)), float(pre.get("tile_overlap", 0.1)),
            float(pre.get("diameter", 17.0)),
        )  # fmt: skip
