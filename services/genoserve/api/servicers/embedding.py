"""genoserve.v1.CellEmbedding: thin servicer over the embedding family code and the batcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from genoserve.api.codecs import embedding as codec
from genoserve.api.codecs.tensor import RegionReader
from genoserve.api.deadlines import deadline_of
from genoserve.api.servicers.registration import add_parsed_servicer
from genoserve.api.streams import in_order
from genoserve.core.errors import InvalidArgument
from genoserve.core.metrics import stage
from genoserve.core.settings import EmbeddingSettings
from genoserve.embedding import contract
from genoserve.embedding.contract import EmbeddingContract
from genoserve.embedding.request import Prepared, prepare
from genoserve.runtime.live import LiveModels
from genoserve.runtime.model import ServedModel
from genoserve.v1 import embedding_pb2

#: EmbedStream messages handled at once.
EMBED_IN_FLIGHT = 3


class CellEmbeddingServicer:
    """genoserve.v1.CellEmbedding. Not the generated base class: its requests are
    ``codec.ParsedEmbedRequest`` (see ``add_to_server``), not ``EmbedRequest`` messages."""

    SERVICE_NAME = "genoserve.v1.CellEmbedding"
    FAMILY = "embedding"

    def __init__(
        self, repository: LiveModels, shared: RegionReader | None = None, settings: EmbeddingSettings | None = None
    ) -> None:
        self.repository = repository
        self.shared = shared
        self.settings = settings or EmbeddingSettings()

    def _model(self, name: str, version: str) -> tuple[ServedModel, EmbeddingContract]:
        if not name:
            raise InvalidArgument.field("model", "is required")
        model = self.repository.get(name, version)
        return model, model.contract_as(EmbeddingContract)

    def _prepare(
        self, parsed: codec.ParsedEmbedRequest, model: EmbeddingContract, log1p_inputs: frozenset[str], first_cell: int
    ) -> Prepared:
        request = parsed.message
        return prepare(
            model, list(request.counts.gene_names), codec.counts(parsed, shared=self.shared),
            list(request.counts.cell_ids), list(request.batch_labels), request.min_gene_overlap,
            request.not_raw_counts, first_cell, log1p_inputs=log1p_inputs, max_cells=self.settings.max_cells,
            max_dense_values=self.settings.max_dense_values,
        )  # fmt: skip

    async def _embed(
        self, parsed: codec.ParsedEmbedRequest, context: grpc.aio.ServicerContext, first_cell: int = 0
    ) -> embedding_pb2.EmbedResponse:
        request = parsed.message
        model, model_contract = self._model(request.model, request.version)
        # Off the event loop: reading shared memory copies the CSR structure, and preparing lays
        # the matrix out dense (megabytes per request).
        with stage(self.FAMILY, "preprocess"):
            prepared = await asyncio.to_thread(self._prepare, parsed, model_contract, model.log1p_inputs, first_cell)
        with stage(self.FAMILY, "infer"):
            outputs = await model.infer(prepared.inputs, deadline_of(context), prepared.log1p_applied)
        with stage(self.FAMILY, "postprocess"):
            variances = outputs[contract.VAR] if request.return_variances else None
            return codec.embed_response(model.name, model.version, prepared.cell_ids, outputs[contract.MEAN],
                                        variances, prepared.alignment)  # fmt: skip

    async def Embed(
        self, request: codec.ParsedEmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        return await self._embed(request, context)

    async def EmbedStream(
        self, request_iterator: AsyncIterator[codec.ParsedEmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[embedding_pb2.EmbedResponse]:
        async def messages() -> AsyncIterator[tuple[codec.ParsedEmbedRequest, int]]:
            first: codec.ParsedEmbedRequest | None = None
            cells = 0  # cells before this message: errors number cells across the stream
            async for request in request_iterator:
                first = first or request
                effective = codec.inherit(first, request)
                yield effective, cells
                cells += codec.cell_count(effective)

        async def answer(number: int, message: tuple[codec.ParsedEmbedRequest, int]) -> embedding_pb2.EmbedResponse:
            try:
                return await self._embed(message[0], context, message[1])
            except InvalidArgument as exc:
                raise InvalidArgument(f"message {number}: {exc.message}", exc.violations) from exc

        # A few messages at once: one's preparation (off the loop) overlaps another's inference;
        # each can hold up to max_cells cells laid out dense, so only a few.
        async for response in in_order(messages(), answer, limit=EMBED_IN_FLIGHT):
            yield response


def add_to_server(servicer: CellEmbeddingServicer, server: grpc.aio.Server) -> None:
    """As the generated ``add_CellEmbeddingServicer_to_server``, with the request deserializer that leaves
    the matrix values in the received bytes (``codec.parse_embed_request``)."""
    add_parsed_servicer(
        server, servicer.SERVICE_NAME, codec.parse_embed_request, embedding_pb2.EmbedResponse.SerializeToString,
        unary={"Embed": servicer.Embed}, stream={"EmbedStream": servicer.EmbedStream},
    )  # fmt: skip
