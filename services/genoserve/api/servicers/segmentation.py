"""genoserve.v1.Segmentation: thin servicer over the segmentation family code and the batcher."""

from __future__ import annotations

import asyncio

import grpc

from genoserve.api.codecs import segmentation as codec
from genoserve.api.codecs.tensor import RegionReader
from genoserve.api.deadlines import deadline_of
from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import RuntimeSettings, SegmentationSettings
from genoserve.runtime.repository import ModelRepository
from genoserve.runtime.session import CUDA, OrtSession
from genoserve.segmentation import images, pipeline, tiling
from genoserve.segmentation.contract import SegmentationContract
from genoserve.segmentation.dynamics import FollowFn
from genoserve.segmentation.follow_graph import GRAPH_PATH, OnnxFollower
from genoserve.v1 import segmentation_pb2, segmentation_pb2_grpc


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServicer):
    SERVICE_NAME = "genoserve.v1.Segmentation"
    FAMILY = "segmentation"

    def __init__(
        self,
        repository: ModelRepository,
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
        contract = SegmentationContract.of(model.spec)
        params = codec.params(request)
        pipeline.check_params(request.diameter, params)
        raw = codec.image(request, self.shared)
        field = "image.array" if request.image.WhichOneof("source") == "array" else "image.encoded"
        checked = images.check(raw, field, self.settings.max_pixels)
        selected = images.select_channels(checked, list(request.channels), contract.channels)
        prepared = await asyncio.to_thread(pipeline.prepare, selected, contract, request.diameter)
        layout = tiling.grid(prepared.network_input.shape[1:], contract.tile, contract.overlap)
        stitcher = tiling.Stitcher(layout)
        deadline = deadline_of(context)
        for chunk in tiling.batches(prepared.network_input, layout, self.settings.tile_batch):
            outputs = await model.infer({contract.input: chunk}, deadline)
            stitcher.add(outputs[contract.output])
        result = await asyncio.to_thread(
            pipeline.finish, prepared, stitcher.result(), params, self.follow, self.settings.reconstruction_block
        )
        return codec.segment_response(model.name, model.version, result, request.return_flows)


def follower(settings: SegmentationSettings, runtime: RuntimeSettings) -> FollowFn | None:
    """The flow follower the settings ask for: None (numpy) or the ONNX graph in a session."""
    import onnxruntime as ort

    on_gpu = runtime.device != "cpu" and CUDA in ort.get_available_providers()
    if settings.reconstruction == "numpy" or (settings.reconstruction == "auto" and not on_gpu):
        return None
    return OnnxFollower(OrtSession(GRAPH_PATH, runtime))
