"""genoserve.v1.SequenceBinding: thin servicer over the binding family code and the batcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np

from genoserve.api.codecs import binding as codec
from genoserve.api.deadlines import deadline_of
from genoserve.binding import encoding, mutagenesis, strands
from genoserve.binding.contract import BindingContract
from genoserve.binding.strands import StrandMode
from genoserve.binding.variants import ReferenceGenome, VariantSpec, check_variant, unknown_reference, windows
from genoserve.core.errors import InvalidArgument
from genoserve.runtime.model import ServedModel
from genoserve.runtime.repository import ModelRepository
from genoserve.v1 import binding_pb2, binding_pb2_grpc

Array = np.ndarray[Any, Any]


class SequenceBindingServicer(binding_pb2_grpc.SequenceBindingServicer):
    SERVICE_NAME = "genoserve.v1.SequenceBinding"
    FAMILY = "binding"

    def __init__(self, repository: ModelRepository, references: dict[str, ReferenceGenome], default: str) -> None:
        self.repository = repository
        self.references = references
        self.default_reference = default

    def _model(self, name: str, version: str) -> tuple[ServedModel, BindingContract]:
        if not name:
            raise InvalidArgument.field("model", "is required")
        model = self.repository.get(name, version)
        return model, BindingContract.of(model.spec)

    @staticmethod
    async def _logits(
        model: ServedModel, contract: BindingContract, onehot: Array, mode: StrandMode, deadline: float | None
    ) -> Array:
        """One batched pass over both strands (as asked) -> combined logits [B, T]."""
        outputs = await model.infer({contract.input: strands.with_reverse(onehot, mode)}, deadline)
        return strands.combine(outputs[contract.output], mode)

    async def Predict(
        self, request: binding_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> binding_pb2.PredictResponse:
        model, contract = self._model(request.model, request.version)
        mode = codec.strand(request.strand, contract.default_strand)
        named = codec.sequences(request.sequences)
        if not named:
            raise InvalidArgument.field("sequences", "at least one sequence is required")
        batch = encoding.encode(named, contract.length, request.crop)
        logits = await self._logits(model, contract, batch, mode, deadline_of(context))
        return codec.predict_response(model.name, model.version, contract.tasks, [s.id for s in named], logits,
                                      strands.sigmoid(logits))  # fmt: skip

    async def PredictStream(
        self, request_iterator: AsyncIterator[binding_pb2.PredictRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[binding_pb2.PredictResponse]:
        number = 0
        async for request in request_iterator:
            try:
                yield await self.Predict(request, context)
            except InvalidArgument as exc:
                raise InvalidArgument(f"batch {number}: {exc.message}", exc.violations) from exc
            number += 1

    async def ScoreVariants(
        self, request: binding_pb2.ScoreVariantsRequest, context: grpc.aio.ServicerContext
    ) -> binding_pb2.ScoreVariantsResponse:
        model, contract = self._model(request.model, request.version)
        mode = codec.strand(request.strand, contract.default_strand)
        name = request.reference or self.default_reference
        reference = self.references.get(name)
        if reference is None:
            raise InvalidArgument.field("reference", unknown_reference(name, self.references))
        variants = codec.variants(request.variants)
        if not variants:
            raise InvalidArgument.field("variants", "at least one variant is required")
        checked = await asyncio.to_thread(_windows_or_errors, variants, reference, contract.length)
        good = [i for i, item in enumerate(checked) if isinstance(item, tuple)]
        results: list[binding_pb2.VariantScores] = []
        if good:
            seqs = [s for i in good for s in checked[i]]
            logits = await self._logits(model, contract, encoding.one_hot(seqs), mode, deadline_of(context))
            ref_logit, alt_logit = logits[0::2], logits[1::2]
            ref_score, alt_score = strands.sigmoid(ref_logit), strands.sigmoid(alt_logit)
        position = {i: k for k, i in enumerate(good)}
        for i, (variant, item) in enumerate(zip(variants, checked, strict=True)):
            if isinstance(item, str):
                results.append(codec.variant_error(variant.id, f"variants[{i}]", item))
            else:
                k = position[i]
                results.append(codec.variant_scores(variant.id, ref_score[k], alt_score[k], ref_logit[k], alt_logit[k]))
        return binding_pb2.ScoreVariantsResponse(model=model.name, version=model.version, reference=name,
                                                 tasks=contract.tasks, results=results)  # fmt: skip

    async def Mutagenesis(
        self, request: binding_pb2.MutagenesisRequest, context: grpc.aio.ServicerContext
    ) -> binding_pb2.MutagenesisResponse:
        model, contract = self._model(request.model, request.version)
        mode = codec.strand(request.strand, contract.default_strand)
        named = codec.sequences([request.sequence])
        [fitted] = encoding.check(named, contract.length, request.crop, field="sequence")
        batch, positions, bases = mutagenesis.saturation_batch(encoding.one_hot([fitted])[0])
        logits = await self._logits(model, contract, batch, mode, deadline_of(context))
        scores = strands.sigmoid(logits)
        return codec.mutagenesis_response(
            model.name, model.version, contract.tasks, request.sequence.id, fitted, scores[0],
            mutagenesis.deltas(scores, positions, bases, contract.length),
            mutagenesis.deltas(logits, positions, bases, contract.length),
        )  # fmt: skip


def _windows_or_errors(
    variants: list[VariantSpec], reference: ReferenceGenome, length: int
) -> list[tuple[str, str] | str]:
    """Per variant: (ref window, alt window), or the rule it breaks (its own error)."""
    out: list[tuple[str, str] | str] = []
    for variant in variants:
        problem = check_variant(variant, reference)
        out.append(problem if problem else windows(variant, reference, length))
    return out
