"""genoserve.v1.VariantCalling: thin servicer over the variants family code and the batcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from genoserve.api.codecs import variants as codec
from genoserve.api.codecs.tensor import RegionReader
from genoserve.api.deadlines import deadline_of
from genoserve.api.servicers import as_own_request
from genoserve.api.servicers.registration import add_parsed_servicer
from genoserve.core.errors import InvalidArgument
from genoserve.core.metrics import stage
from genoserve.core.settings import VariantsSettings
from genoserve.runtime.live import LiveModels
from genoserve.runtime.model import ServedModel
from genoserve.v1 import variants_pb2
from genoserve.variants.contract import VariantsContract
from genoserve.variants.pipeline import SiteCaller, with_probabilities


class VariantCallingServicer:
    """genoserve.v1.VariantCalling. Not the generated base class: its requests are
    ``codec.ParsedCallRequest`` (see ``add_to_server``), not ``CallVariantsRequest`` messages."""

    SERVICE_NAME = "genoserve.v1.VariantCalling"
    FAMILY = "variants"

    def __init__(self, repository: LiveModels, settings: VariantsSettings, shared: RegionReader | None = None) -> None:
        self.repository = repository
        self.settings = settings
        self.shared = shared

    def _model(self, name: str, version: str, channels: int) -> tuple[ServedModel, VariantsContract]:
        if not name:
            for status in self.repository.statuses():
                contract = status.contract
                if status.ready and isinstance(contract, VariantsContract) and contract.channels == channels:
                    name = status.name
                    break
            else:
                raise InvalidArgument.field(
                    "model", f"no ready variants model takes {channels}-channel pileups; name one explicitly"
                )
        model = self.repository.get(name, version)
        contract = model.contract_as(VariantsContract)
        if contract.channels != channels:
            raise InvalidArgument.field(
                "examples", f"model {name} expects pileups {contract.layout}; got {channels} channels"
            )
        return model, contract

    def _decode(self, parsed: codec.ParsedCallRequest) -> codec.DecodedExamples:
        request = parsed.message
        return codec.examples(
            request.examples, request.sample_name, parsed.pileups, parsed.pileups_data, self.shared,
            max_alts=self.settings.max_alts_per_site,
        )  # fmt: skip

    async def _call(
        self, parsed: codec.ParsedCallRequest, context: grpc.aio.ServicerContext, caller: SiteCaller | None
    ) -> variants_pb2.CallVariantsResponse:
        request = parsed.message
        if not request.examples:
            raise InvalidArgument.field("examples", "at least one example is required")
        # Decoding and calling sites take time in proportion to the request: off the event loop,
        # which keeps serving health checks and other requests meanwhile.
        with stage(self.FAMILY, "preprocess"):
            decoded = await asyncio.to_thread(self._decode, parsed)
        usable = decoded.usable
        if not usable:
            first = decoded.items[0].error
            field = first.field if first else "examples"
            message = first.message if first else "no usable examples"
            raise InvalidArgument.field(field, message.removeprefix(f"{field}: "))
        channels = int(decoded.images.shape[3])
        model, contract = self._model(request.model, request.version, channels)
        with stage(self.FAMILY, "infer"):
            outputs = await model.infer({contract.input: decoded.images}, deadline_of(context))
        with stage(self.FAMILY, "postprocess"):
            return await asyncio.to_thread(_respond, model, decoded, outputs[contract.output], caller)

    async def CallVariants(
        self, request: codec.ParsedCallRequest, context: grpc.aio.ServicerContext
    ) -> variants_pb2.CallVariantsResponse:
        return await self._call(request, context, None)

    async def CallVariantsStream(
        self, request_iterator: AsyncIterator[codec.ParsedCallRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[variants_pb2.CallVariantsResponse]:
        caller = SiteCaller()
        number = 0
        last: variants_pb2.CallVariantsResponse | None = None
        async for request in request_iterator:
            try:
                last = await as_own_request(self._call(request, context, caller))
            except InvalidArgument as exc:
                raise InvalidArgument(f"batch {number}: {exc.message}", exc.violations) from exc
            yield last
            number += 1
        unfinished = caller.unfinished()
        if unfinished:
            yield variants_pb2.CallVariantsResponse(
                model=last.model if last else "",
                version=last.version if last else "",
                site_errors=[codec.site_error(e.field, e.message) for e in unfinished],
            )


def _respond(
    model: ServedModel,
    decoded: codec.DecodedExamples,
    probabilities: npt.NDArray[np.floating[Any]],
    caller: SiteCaller | None,
) -> variants_pb2.CallVariantsResponse:
    """The response: each example's probabilities or error, and the calls of the sites completed
    (in ``caller`` across a stream's requests, else in this request alone)."""
    results = [
        variants_pb2.ExampleResult(id=d.id, error=d.error)
        if d.row is None
        else codec.example_result(d.id, probabilities[d.row])
        for d in decoded.items
    ]
    own = caller if caller is not None else SiteCaller()
    usable = [(d.id, d.call) for d in decoded.usable if d.call is not None]  # usable examples have their call
    called = own.add([i for i, _ in usable], with_probabilities([c for _, c in usable], probabilities))
    errors = called.errors if caller is not None else called.errors + own.incomplete()
    return variants_pb2.CallVariantsResponse(
        model=model.name, version=model.version, results=results,
        calls=[codec.variant_call(site, ids) for site, ids in called.calls],
        site_errors=[codec.site_error(e.field, e.message) for e in errors],
    )  # fmt: skip


def add_to_server(servicer: VariantCallingServicer, server: grpc.aio.Server) -> None:
    """As the generated ``add_VariantCallingServicer_to_server``, with the request deserializer that leaves
    the pileup pixels in the received bytes (``codec.parse_call_request``)."""
    add_parsed_servicer(
        server, servicer.SERVICE_NAME, codec.parse_call_request, variants_pb2.CallVariantsResponse.SerializeToString,
        unary={"CallVariants": servicer.CallVariants}, stream={"CallVariantsStream": servicer.CallVariantsStream},
    )  # fmt: skip
