"""genoserve.v1.Segmentation: thin servicer over the segmentation family code and the batcher."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np

from genoserve.api.codecs import segmentation as codec
from genoserve.api.codecs.tensor import RegionReader
from genoserve.api.deadlines import deadline_of
from genoserve.core.errors import InvalidArgument
from genoserve.core.metrics import stage
from genoserve.core.settings import RuntimeSettings, SegmentationSettings
from genoserve.runtime.live import LiveModels
from genoserve.runtime.session import CUDA, OrtSession
from genoserve.segmentation import images, pipeline, tiling
from genoserve.segmentation.contract import SegmentationContract
from genoserve.segmentation.dynamics import FollowFn
from genoserve.segmentation.follow_graph import GRAPH_PATH, OnnxFollower
from genoserve.v1 import segmentation_pb2, segmentation_pb2_grpc

Array = np.ndarray[Any, Any]


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServicer):
    SERVICE_NAME = "genoserve.v1.Segmentation"
    FAMILY = "segmentation"

    def __init__(
        self,
        repository: LiveModels,
        settings: SegmentationSettings,
        runtime: RuntimeSettings,
        shared: RegionReader | None = None,
    ) -> None:
        self.repository = repository
        self.shared = shared
        self.settings = settings
        self.follow = follower(settings, runtime)

    async def Segment(
        self, request: segmentation_pb2.SegmentRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.SegmentResponse:
        if not request.model:
            raise InvalidArgument.field("model", "is required")
        model = self.repository.get(request.model, request.version)
        contract = model.contract_as(SegmentationContract)
        params = codec.params(request)
        pipeline.check_params(request.diameter, params)
        deadline = deadline_of(context)
        model.admit(1, deadline)  # an overloaded model refuses before the image is decoded and prepared
        # Off the event loop: decoding a TIFF/PNG, checking values and selecting channels take
        # time in proportion to the image (after its declared size is checked against the limit).
        with stage(self.FAMILY, "preprocess"):
            selected = await asyncio.to_thread(self._image, request, contract)
            prepared = await asyncio.to_thread(pipeline.prepare, selected, contract, request.diameter)
        layout = pipeline.grid(prepared, contract)
        stitcher = tiling.Stitcher(layout)
        with stage(self.FAMILY, "infer"):  # tiles cut and stitched as the model returns them
            for chunk in tiling.batches(prepared.network_input, layout, self.settings.tile_batch):
                outputs = await model.infer({contract.input: chunk}, deadline)
                stitcher.add(outputs[contract.output])
        with stage(self.FAMILY, "postprocess"):
            result = await asyncio.to_thread(
                pipeline.finish, prepared, stitcher.result(), params, self.follow, self.settings.reconstruction_block
            )
            return codec.segment_response(model.name, model.version, result, request.return_flows)

    def _image(self, request: segmentation_pb2.SegmentRequest, contract: SegmentationContract) -> Array:
        """The request's image checked against every limit, channels selected: float32 [C, H, W]."""
        raw = codec.image(request, self.shared, self.settings.max_pixels)
        field = "image.array" if request.image.WhichOneof("source") == "array" else "image.encoded"
        checked = images.check(raw, field, self.settings.max_pixels)
        shape = (int(checked.shape[0]), int(checked.shape[1]))
        limit = self.settings.resolved_max_network_pixels
        pipeline.check_network_size(shape, contract, request.diameter, limit, field)
        return images.select_channels(checked, list(request.channels), contract.channels)


def follower(settings: SegmentationSettings, runtime: RuntimeSettings) -> FollowFn | None:
    """The flow follower the settings ask for: None (numpy) or the ONNX graph in a session."""
    import onnxruntime as ort

    on_gpu = runtime.device != "cpu" and CUDA in ort.get_available_providers()
    if settings.reconstruction == "numpy" or (settings.reconstruction == "auto" and not on_gpu):
        return None
    return OnnxFollower(OrtSession(GRAPH_PATH, runtime))
