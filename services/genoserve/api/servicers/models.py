"""genoserve.v1.Models: list, metadata, readiness, generic tensor inference, and model control."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from genoserve.api.auth import current_tenant
from genoserve.api.codecs import models as model_codec
from genoserve.api.codecs import tensor as tensor_codec
from genoserve.api.codecs.tensor import RegionReader
from genoserve.api.deadlines import deadline_of
from genoserve.api.streams import concurrently
from genoserve.core.errors import GenoserveError, InvalidArgument, NotFound, PermissionDenied, quoted
from genoserve.core.settings import AuthSettings
from genoserve.runtime.live import LiveModels
from genoserve.runtime.model import ServedModel
from genoserve.segmentation.contract import SegmentationContract
from genoserve.v1 import models_pb2, models_pb2_grpc


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    SERVICE_NAME = "genoserve.v1.Models"

    def __init__(
        self, repository: LiveModels, shared: RegionReader | None = None, auth: AuthSettings | None = None
    ) -> None:
        self.repository = repository
        self.shared = shared
        self.auth = auth or AuthSettings()

    def _require_admin(self, method: str, what: str) -> None:
        """With tokens on, only ``server.auth.admin_tenants`` control what is served and read the
        model store through the server (``what``: what ``method`` does, for the error)."""
        tenant = current_tenant.get()
        if self.auth.enabled and tenant not in self.auth.admin_tenants:
            raise PermissionDenied(
                f"Models/{method} {what}: it needs an admin tenant "
                f"(server.auth.admin_tenants: {list(self.auth.admin_tenants)}); this token's tenant is {tenant!r}"
            )

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        statuses = [
            s
            for s in self.repository.statuses()
            if not request.family or (s.spec is not None and s.spec.family == request.family)
        ]
        return models_pb2.ListModelsResponse(models=[model_codec.model_info(s) for s in statuses])

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelInfo:
        if not request.name:
            raise InvalidArgument.field("name", "is required")
        statuses = [s for s in self.repository.statuses() if s.name == request.name]
        if not statuses:
            raise NotFound(f"model {quoted(request.name)} is not in the repository")
        if request.version:
            chosen = [s for s in statuses if s.version == request.version]
            if not chosen:
                raise NotFound(
                    f"model {quoted(request.name)} has no version {quoted(request.version)}; "
                    f"versions: {[s.version for s in statuses]}"
                )
            return model_codec.model_info(chosen[0])
        ready = [s for s in statuses if s.ready]
        pick = max(ready or statuses, key=lambda s: int(s.version or 0))
        return model_codec.model_info(pick)

    async def Infer(
        self, request: models_pb2.InferRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.InferResponse:
        return await self._infer(request, deadline_of(context))

    async def InferStream(
        self, request_iterator: AsyncIterator[models_pb2.InferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[models_pb2.InferStreamResponse]:
        deadline = deadline_of(context)
        async for answer in concurrently(request_iterator, lambda request: self._answer(request, deadline)):
            yield answer

    async def _infer(self, request: models_pb2.InferRequest, deadline: float | None) -> models_pb2.InferResponse:
        if not request.model:
            raise InvalidArgument.field("model", "is required")
        model = self.repository.get(request.model, request.version)
        inputs = tensor_codec.map_to_numpy(request.inputs, "inputs", self.shared)
        check_family_rules(model, inputs)
        outputs = await model.infer(inputs, deadline)
        return models_pb2.InferResponse(
            model=model.name,
            version=model.version,
            outputs={name: tensor_codec.from_numpy(array) for name, array in outputs.items()},
            id=request.id,
        )

    async def _answer(self, request: models_pb2.InferRequest, deadline: float | None) -> models_pb2.InferStreamResponse:
        """One InferStream request: its answer, or its error as an answer."""
        try:
            return models_pb2.InferStreamResponse(response=await self._infer(request, deadline))
        except GenoserveError as exc:
            head = models_pb2.InferResponse(model=request.model, version=request.version, id=request.id)
            return models_pb2.InferStreamResponse(
                response=head, error=models_pb2.StreamError(code=exc.code, message=exc.message)
            )

    async def Load(
        self, request: models_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.LoadModelResponse:
        self._require_admin("Load", "changes what this server serves")
        records = await self.repository.load_model(request.name, request.version)
        keys = {(r.name, r.version_label) for r in records}
        statuses = [s for s in self.repository.statuses() if (s.name, s.version) in keys]
        return models_pb2.LoadModelResponse(models=[model_codec.model_info(s) for s in statuses])

    async def Unload(
        self, request: models_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.UnloadModelResponse:
        self._require_admin("Unload", "changes what this server serves")
        versions = await self.repository.unload(request.name, request.version)
        return models_pb2.UnloadModelResponse(versions=versions)

    async def RepositoryIndex(
        self, request: models_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.RepositoryIndexResponse:
        self._require_admin("RepositoryIndex", "lists the whole model store, also models this server does not serve")
        entries = await self.repository.index()
        return models_pb2.RepositoryIndexResponse(models=[model_codec.index_entry(e) for e in entries])


def check_family_rules(model: ServedModel, inputs: dict[str, tensor_codec.Array]) -> None:
    """Rules a family's model has beyond its declared input shapes, checked before the session
    sees the arrays (else ONNX Runtime fails the call, an INTERNAL error): a segmentation network
    takes H and W in multiples of its size_multiple, up to one tile."""
    if isinstance(model.contract, SegmentationContract):
        contract = model.contract
        image = inputs.get(contract.input)
        if image is not None:
            contract.check_network_input(image.shape, f"inputs[{contract.input}]")
