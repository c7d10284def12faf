"""genoserve.v1 segmentation messages <-> the segmentation family's arrays and parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

from genoserve.api.codecs.tensor import RegionReader, from_numpy, to_numpy
from genoserve.core.errors import InvalidArgument
from genoserve.segmentation import images
from genoserve.segmentation.dynamics import MaskParams
from genoserve.segmentation.pipeline import Segmented
from genoserve.v1 import segmentation_pb2

Array = np.ndarray[Any, Any]


def image(
    message: segmentation_pb2.SegmentRequest, shared: RegionReader | None = None, max_pixels: int | None = None
) -> Array:
    """The request's image as stored (array or decoded file), not yet checked but for its size:
    with ``max_pixels``, an array's shape and a file's declared size are checked (as
    ``images.check_shape``) before it is copied or decoded. An array in shared memory is read
    through ``shared``."""
    which = message.image.WhichOneof("source")
    if which == "array":
        array = to_numpy(message.image.array, "image.array", shared=shared)
        if max_pixels is not None:  # before the copy below (a shared memory object may be large)
            images.check_shape(array.shape, "image.array", max_pixels)
        # A private copy of an image in shared memory: the client could change it after the checks
        # (a NaN then would reach the flow following). Images are small next to their compute.
        return array.copy() if message.image.array.HasField("shared_memory") else array
    if which == "encoded":
        return images.decode(message.image.encoded, "image.encoded", max_pixels)
    raise InvalidArgument.field("image", "is required (array or encoded TIFF/PNG bytes)")


def params(message: segmentation_pb2.SegmentRequest) -> MaskParams:
    defaults = MaskParams()
    return MaskParams(
        niter=message.niter if message.HasField("niter") else defaults.niter,
        cellprob_threshold=(
            message.cellprob_threshold if message.HasField("cellprob_threshold") else defaults.cellprob_threshold
        ),
        flow_threshold=message.flow_threshold if message.HasField("flow_threshold") else defaults.flow_threshold,
        min_size=message.min_size if message.HasField("min_size") else defaults.min_size,
    )


def segment_response(model: str, version: str, result: Segmented, with_flows: bool) -> segmentation_pb2.SegmentResponse:
    s = result.stats
    cells = [
        segmentation_pb2.Cell(
            label=int(s.label[i]), area=int(s.area[i]), centroid_y=float(s.centroid_y[i]),
            centroid_x=float(s.centroid_x[i]), bbox_min_y=int(s.bbox[i, 0]), bbox_min_x=int(s.bbox[i, 1]),
            bbox_max_y=int(s.bbox[i, 2]), bbox_max_x=int(s.bbox[i, 3]), mean_intensity=float(s.mean_intensity[i]),
        )
        for i in range(s.label.size)
    ]  # fmt: skip
    response = segmentation_pb2.SegmentResponse(
        model=model, version=version, n_cells=result.n_cells, cells=cells,
        masks=from_numpy(result.masks.astype(images.label_dtype(result.n_cells))),
    )  # fmt: skip
    if with_flows:
        response.flows.CopyFrom(from_numpy(result.flows.astype(np.float32)))
        response.cellprob.CopyFrom(from_numpy(result.cellprob.astype(np.float32)))
    return response
