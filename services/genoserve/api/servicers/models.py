"""genoserve.v1.Models: list, metadata, readiness, and generic tensor inference."""

from __future__ import annotations

import grpc

from genoserve.api.codecs import models as model_codec
from genoserve.api.codecs import tensor as tensor_codec
from genoserve.api.codecs.tensor import RegionReader
from genoserve.api.deadlines import deadline_of
from genoserve.core.errors import InvalidArgument, NotFound
from genoserve.runtime.repository import ModelRepository
from genoserve.v1 import models_pb2, models_pb2_grpc


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    SERVICE_NAME = "genoserve.v1.Models"

    def __init__(self, repository: ModelRepository, shared: RegionReader | None = None) -> None:
        self.repository = repository
        self.shared = shared

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
            raise NotFound(f"model {request.name!r} is not in the repository")
        if request.version:
            chosen = [s for s in statuses if s.version == request.version]
            if not chosen:
                raise NotFound(
                    f"model {request.name!r} has no version {request.version!r}; "
                    f"versions: {[s.version for s in statuses]}"
                )
            return model_codec.model_info(chosen[0])
        ready = [s for s in statuses if s.ready]
        pick = max(ready or statuses, key=lambda s: int(s.version or 0))
        return model_codec.model_info(pick)

    async def Infer(
        self, request: models_pb2.InferRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.InferResponse:
        if not request.model:
            raise InvalidArgument.field("model", "is required")
        model = self.repository.get(request.model, request.version)
        inputs = tensor_codec.map_to_numpy(request.inputs, "inputs", self.shared)
        outputs = await model.infer(inputs, deadline_of(context))
        return models_pb2.InferResponse(
            model=model.name,
            version=model.version,
            outputs={name: tensor_codec.from_numpy(array) for name, array in outputs.items()},
        )
