"""inference.GRPCInferenceService: the Open Inference Protocol (KServe v2 / Triton) over the same
repository and batchers as genoserve.v1.Models, on the same port, with the same auth and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from genoserve import __version__
from genoserve.api.codecs import open_inference as codec
from genoserve.api.deadlines import deadline_of
from genoserve.api.servicers.models import check_family_rules
from genoserve.api.streams import concurrently
from genoserve.core.errors import GenoserveError, InvalidArgument, NotFound, quoted
from genoserve.inference import open_inference_pb2 as oip
from genoserve.inference import open_inference_pb2_grpc
from genoserve.runtime.live import LiveModels

#: What ModelMetadata reports as every model's platform (Triton's name for an ONNX Runtime model).
PLATFORM = "onnxruntime_onnx"


class OpenInferenceServicer(open_inference_pb2_grpc.GRPCInferenceServiceServicer):
    SERVICE_NAME = "inference.GRPCInferenceService"

    def __init__(self, repository: LiveModels) -> None:
        self.repository = repository

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        ready = self.repository.all_settled and any(s.ready for s in self.repository.statuses())
        return oip.ServerReadyResponse(ready=ready)

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        statuses = [s for s in self.repository.statuses() if s.name == request.name]
        ready = any(s.ready for s in statuses if not request.version or s.version == request.version)
        return oip.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name="genoserve", version=__version__, extensions=[])

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        if not request.name:
            raise InvalidArgument.field("name", "is required")
        statuses = [s for s in self.repository.statuses() if s.name == request.name and s.spec is not None]
        if request.version:
            statuses = [s for s in statuses if s.version == request.version]
        if not statuses:
            what = quoted(request.name) + (f" version {quoted(request.version)}" if request.version else "")
            raise NotFound(f"model {what} is not in the repository")
        ready = [s for s in statuses if s.ready]
        spec = max(ready or statuses, key=lambda s: int(s.version or 0)).spec
        assert spec is not None
        return oip.ModelMetadataResponse(
            name=request.name,
            versions=[s.version for s in ready],
            platform=PLATFORM,
            inputs=[codec.tensor_metadata(t) for t in spec.inputs],
            outputs=[codec.tensor_metadata(t) for t in spec.outputs],
        )

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        return await self._infer(request, deadline_of(context))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[oip.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[oip.ModelStreamInferResponse]:
        deadline = deadline_of(context)
        async for answer in concurrently(request_iterator, lambda request: self._answer(request, deadline)):
            yield answer

    async def _infer(self, request: oip.ModelInferRequest, deadline: float | None) -> oip.ModelInferResponse:
        if not request.model_name:
            raise InvalidArgument.field("model_name", "is required")
        model = self.repository.get(request.model_name, request.model_version)
        arrays = codec.inputs(request)
        check_family_rules(model, arrays)
        names = codec.requested(request, [t.name for t in model.spec.outputs])
        outputs = await model.infer(arrays, deadline)
        return codec.response(model.name, model.version, request.id, outputs, names)

    async def _answer(self, request: oip.ModelInferRequest, deadline: float | None) -> oip.ModelStreamInferResponse:
        """One ModelStreamInfer request: its answer, or its error as ``error_message``."""
        try:
            return oip.ModelStreamInferResponse(infer_response=await self._infer(request, deadline))
        except GenoserveError as exc:
            head = oip.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            return oip.ModelStreamInferResponse(error_message=f"{exc.code}: {exc.message}", infer_response=head)
