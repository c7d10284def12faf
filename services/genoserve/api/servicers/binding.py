"""genoserve.v1.SequenceBinding: thin servicer over the binding family code and the batcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from genoserve.api.codecs import binding as codec
from genoserve.api.deadlines import deadline_of
from genoserve.api.streams import in_order
from genoserve.binding import encoding, mutagenesis, strands
from genoserve.binding.contract import BindingContract
from genoserve.binding.limits import RequestLimits
from genoserve.binding.strands import StrandMode
from genoserve.binding.variants import ReferenceGenome, VariantSpec, check_variant, unknown_reference, windows
from genoserve.core.errors import InvalidArgument
from genoserve.core.metrics import stage
from genoserve.core.settings import BindingSettings
from genoserve.runtime.live import LiveModels
from genoserve.runtime.model import ServedModel
from genoserve.v1 import binding_pb2, binding_pb2_grpc

Array = np.ndarray[Any, Any]
T = TypeVar("T")

#: Requests of more bases than this are one-hot encoded off the event loop (for a small request
#: the thread hand-off costs more than the encoding).
INLINE_BASES = 1 << 16


async def _off_loop_if_large(bases: int, fn: Callable[..., T], *args: Any) -> T:
    if bases > INLINE_BASES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _encoded(named: list[encoding.NamedSequence], length: int, crop: bool, mode: StrandMode) -> Array:
    """Checked, fitted, one-hot sequences with their reverse complements as ``mode`` asks."""
    return strands.with_reverse(encoding.encode(named, length, crop), mode)


def _one_hot_both(sequences: list[str], mode: StrandMode) -> Array:
    return strands.with_reverse(encoding.one_hot(sequences), mode)


class SequenceBindingServicer(binding_pb2_grpc.SequenceBindingServicer):
    SERVICE_NAME = "genoserve.v1.SequenceBinding"
    FAMILY = "binding"

    def __init__(
        self,
        repository: LiveModels,
        references: dict[str, ReferenceGenome],
        default: str,
        settings: BindingSettings | None = None,
    ) -> None:
        self.repository = repository
        self.references = references
        self.default_reference = default
        settings = settings or BindingSettings()
        self.limits = RequestLimits(settings.max_sequences, settings.max_bases)

    def _model(self, name: str, version: str) -> tuple[ServedModel, BindingContract]:
        if not name:
            raise InvalidArgument.field("model", "is required")
        model = self.repository.get(name, version)
        return model, model.contract_as(BindingContract)

    @staticmethod
    async def _logits(
        model: ServedModel, contract: BindingContract, both: Array, mode: StrandMode, deadline: float | None
    ) -> Array:
        """One batched pass over both strands (``strands.with_reverse``) -> combined logits [B, T]."""
        outputs = await model.infer({contract.input: both}, deadline)
        return strands.combine(outputs[contract.output], mode)

    async def Predict(
        self, request: binding_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> binding_pb2.PredictResponse:
        model, contract = self._model(request.model, request.version)
        mode = codec.strand(request.strand, contract.default_strand)
        self.limits.check_predict(len(request.sequences), contract.length)
        with stage(self.FAMILY, "preprocess"):
            named = codec.sequences(request.sequences)
            if not named:
                raise InvalidArgument.field("sequences", "at least one sequence is required")
            work = max(len(named) * contract.length, sum(len(s.bases) for s in named))  # fitted, or as sent
            both = await _off_loop_if_large(work, _encoded, named, contract.length, request.crop, mode)
        with stage(self.FAMILY, "infer"):
            logits = await self._logits(model, contract, both, mode, deadline_of(context))
        with stage(self.FAMILY, "postprocess"):
            return codec.predict_response(model.name, model.version, contract.tasks, [s.id for s in named], logits,
                                          strands.sigmoid(logits))  # fmt: skip

    async def PredictStream(
        self, request_iterator: AsyncIterator[binding_pb2.PredictRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[binding_pb2.PredictResponse]:
        async def answer(number: int, request: binding_pb2.PredictRequest) -> binding_pb2.PredictResponse:
            try:
                return await self.Predict(request, context)
            except InvalidArgument as exc:
                raise InvalidArgument(f"batch {number}: {exc.message}", exc.violations) from exc

        async for response in in_order(request_iterator, answer):
            yield response

    async def ScoreVariants(
        self, request: binding_pb2.ScoreVariantsRequest, context: grpc.aio.ServicerContext
    ) -> binding_pb2.ScoreVariantsResponse:
        model, contract = self._model(request.model, request.version)
        mode = codec.strand(request.strand, contract.default_strand)
        self.limits.check_variants(len(request.variants), contract.length)
        name = request.reference or self.default_reference
        reference = self.references.get(name)
        if reference is None:
            raise InvalidArgument.field("reference", unknown_reference(name, self.references))
        with stage(self.FAMILY, "preprocess"):
            variants = codec.variants(request.variants)
            if not variants:
                raise InvalidArgument.field("variants", "at least one variant is required")
            checked = await asyncio.to_thread(_windows_or_errors, variants, reference, contract.length)
            good = [i for i, item in enumerate(checked) if isinstance(item, tuple)]
            if good:
                seqs = [s for i in good for s in checked[i]]
                both = await _off_loop_if_large(len(seqs) * contract.length, _one_hot_both, seqs, mode)
        if good:
            with stage(self.FAMILY, "infer"):
                logits = await self._logits(model, contract, both, mode, deadline_of(context))
        with stage(self.FAMILY, "postprocess"):
            results: list[binding_pb2.VariantScores] = []
            if good:
                ref_logit, alt_logit = logits[0::2], logits[1::2]
                ref_score, alt_score = strands.sigmoid(ref_logit), strands.sigmoid(alt_logit)
            position = {i: k for k, i in enumerate(good)}
            for i, (variant, item) in enumerate(zip(variants, checked, strict=True)):
                if isinstance(item, str):
                    results.append(codec.variant_error(variant.id, f"variants[{i}]", item))
                else:
                    k = position[i]
                    results.append(
                        codec.variant_scores(variant.id, ref_score[k], alt_score[k], ref_logit[k], alt_logit[k])
                    )
            return binding_pb2.ScoreVariantsResponse(model=model.name, version=model.version, reference=name,
                                                     tasks=contract.tasks, results=results)  # fmt: skip

    async def Mutagenesis(
        self, request: binding_pb2.MutagenesisRequest, context: grpc.aio.ServicerContext
    ) -> binding_pb2.MutagenesisResponse:
        model, contract = self._model(request.model, request.version)
        mode = codec.strand(request.strand, contract.default_strand)
        self.limits.check_mutagenesis(contract.length)
        with stage(self.FAMILY, "preprocess"):
            named = codec.sequences([request.sequence])
            [fitted] = encoding.check(named, contract.length, request.crop, field="sequence")
            both, positions, bases = await _off_loop_if_large(
                (1 + 3 * contract.length) * contract.length, _saturation, fitted, mode
            )
        with stage(self.FAMILY, "infer"):
            logits = await self._logits(model, contract, both, mode, deadline_of(context))
        with stage(self.FAMILY, "postprocess"):
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


def _saturation(fitted: str, mode: StrandMode) -> tuple[Array, Array, Array]:
    """``mutagenesis.saturation_batch`` of one fitted sequence, with reverse complements as asked."""
    batch, positions, bases = mutagenesis.saturation_batch(encoding.one_hot([fitted])[0])
    return strands.with_reverse(batch, mode), positions, bases
