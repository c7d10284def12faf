"""genoserve.v1 variant-calling messages <-> the variants family's domain objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from genoserve.api.codecs import wire
from genoserve.api.codecs.tensor import Placer, RegionReader, from_numpy, to_numpy
from genoserve.core.errors import InvalidArgument
from genoserve.v1 import common_pb2, tensor_pb2, variants_pb2
from genoserve.variants.checks import MAX_COUNT, SiteFields, check_site, count
from genoserve.variants.examples import CallInfo, PileupExample, parse_example
from genoserve.variants.postprocess import ExampleCall, VariantCall
from genoserve.variants.sites import check_pileup, check_pileups

#: Field numbers (protos/genoserve/v1): CallVariantsRequest.pileups and Tensor.data.
_REQUEST_PILEUPS = variants_pb2.CallVariantsRequest.PILEUPS_FIELD_NUMBER
_TENSOR_DATA = tensor_pb2.Tensor.DATA_FIELD_NUMBER
_FILTERS = {
    "PASS": variants_pb2.FILTER_PASS,
    "RefCall": variants_pb2.FILTER_REF_CALL,
    "LowQual": variants_pb2.FILTER_LOW_QUAL,
    "NoCall": variants_pb2.FILTER_NO_CALL,
}


@dataclass
class DecodedExample:
    """One request example: its id, its site and alt set (``call``), and its row in the batch
    (``DecodedExamples.images``), or its error."""

    id: str
    call: ExampleCall | None
    row: int | None
    error: common_pb2.ItemError | None = None


@dataclass
class DecodedExamples:
    """Every request example in order, and the pileups of the usable ones as one batch."""

    items: list[DecodedExample]
    #: uint8 [usable examples, 100, 221, channels]; row ``item.row`` is ``item``'s pileup.
    images: npt.NDArray[np.uint8]

    @property
    def usable(self) -> list[DecodedExample]:
        return [d for d in self.items if d.row is not None]


def _item_error(field: str, message: str) -> common_pb2.ItemError:
    return common_pb2.ItemError(field=field, message=message)


def _request_fields(field: str) -> SiteFields:
    """What errors call the parts of request example ``field`` (``examples[i]``)."""
    return SiteFields(
        chrom=f"{field}.chrom", pos=f"{field}.pos", end=f"{field}.pos", ref=f"{field}.ref", alts=f"{field}.alts",
        alt_allele_indices=f"{field}.alt_allele_indices", depth=f"{field}.depth",
        allele_depths=f"{field}.allele_depths", one_based=True,
    )  # fmt: skip


def _from_fields(message: variants_pb2.PileupExample, field: str, max_alts: int) -> ExampleCall:
    """The example's site from its fields, checked (``genoserve.variants.checks``) before any work:
    the alt count first."""
    start = int(message.pos) - 1
    site = check_site(
        message.chrom, start, None, message.ref, message.alts, message.alt_allele_indices, message.allele_depths,
        _request_fields(field), max_alts,
    )  # fmt: skip
    depths = [count(d, f"{field}.allele_depths") for d in message.allele_depths]
    depth = count(message.depth, f"{field}.depth") or sum(depths)
    if depth > MAX_COUNT:
        raise InvalidArgument.field(
            f"{field}.allele_depths", f"sum {depth} (the depth, as depth is 0) must be <= {MAX_COUNT}"
        )
    fractions = [d / depth if depth else 0.0 for d in depths[1:]]
    return ExampleCall(
        message.chrom, start, start + len(site.reference_bases), site.reference_bases, site.alternate_bases,
        site.alt_allele_indices, (0.0, 0.0, 0.0), CallInfo(depth, depths, fractions),
    )  # fmt: skip


def _site_error_or_raise(exc: InvalidArgument, field: str, example_id: str) -> DecodedExample:
    violation = exc.violations[0] if exc.violations else None
    where = violation.field if violation else field
    if ".pileup" in where or "image/encoded" in where:
        raise exc  # layout errors: the whole request is malformed
    return DecodedExample(example_id, None, None, _item_error(where, exc.message))


def examples(
    messages: Sequence[variants_pb2.PileupExample],
    sample_name: str,
    pileups: tensor_pb2.Tensor | None = None,
    pileups_data: Any = None,
    shared: RegionReader | None = None,
    *,
    max_alts: int,
) -> DecodedExamples:
    """Decode every example. Site, allele and read-count problems (``genoserve.variants.checks``,
    the same rules for request fields and tf.Examples; at most ``max_alts`` alts per site, the
    setting ``variants.max_alts_per_site``) become that example's error, found before its pileup
    is looked at; a pileup with the wrong layout (or mixed channel counts) fails the whole request
    with INVALID_ARGUMENT.

    ``pileups`` (the request's batched tensor, when set; its bytes in ``pileups_data`` when kept
    out of the message) holds every example's pileup: it is used as the batch without a copy
    when every example is usable. ``shared`` reads tensors given in shared memory.
    """
    if pileups is not None:
        return _with_batch(messages, sample_name, pileups, pileups_data, shared, max_alts)
    items: list[DecodedExample] = []
    images: list[npt.NDArray[np.uint8]] = []
    channels: int | None = None
    for index, message in enumerate(messages):
        field = f"examples[{index}]"
        example_id = message.id or str(index)
        try:
            if message.tf_example:
                parsed = parse_example(message.tf_example, f"{field}.tf_example", max_alts)
                image = parsed.image
                call = ExampleCall(
                    parsed.reference_name, parsed.start, parsed.end, parsed.reference_bases,
                    parsed.alternate_bases, tuple(sorted(parsed.alt_allele_indices)), (0.0, 0.0, 0.0),
                    parsed.call, sample_name or parsed.sample_name,
                )  # fmt: skip
                check_pileup(image, channels, f"{field}.tf_example image/encoded")
            else:
                call = _from_fields(message, field, max_alts)
                call.sample_name = sample_name
                if not message.HasField("pileup"):
                    raise InvalidArgument.field(f"{field}.pileup", "is required (or set tf_example or request pileups)")
                image = to_numpy(message.pileup, f"{field}.pileup", shared=shared)
                check_pileup(image, channels, f"{field}.pileup")
        except InvalidArgument as exc:
            items.append(_site_error_or_raise(exc, field, example_id))
            continue
        channels = image.shape[2]
        items.append(DecodedExample(example_id, call, len(images)))
        images.append(image)
    batch = np.stack(images) if images else np.zeros((0, 100, 221, 7), dtype=np.uint8)
    return DecodedExamples(items, batch)


def _with_batch(
    messages: Sequence[variants_pb2.PileupExample],
    sample_name: str,
    pileups: tensor_pb2.Tensor,
    data: Any,
    shared: RegionReader | None,
    max_alts: int,
) -> DecodedExamples:
    batch = to_numpy(pileups, "pileups", data, shared)
    check_pileups(batch, len(messages), "pileups")
    items: list[DecodedExample] = []
    rows: list[int] = []
    for index, message in enumerate(messages):
        field = f"examples[{index}]"
        if message.HasField("pileup") or message.tf_example:
            raise InvalidArgument.field(
                f"{field}.pileup", "must be unset (and tf_example empty) when the request sets pileups"
            )
        example_id = message.id or str(index)
        try:
            call = _from_fields(message, field, max_alts)
        except InvalidArgument as exc:
            items.append(_site_error_or_raise(exc, field, example_id))
            continue
        call.sample_name = sample_name
        items.append(DecodedExample(example_id, call, len(rows)))
        rows.append(index)
    images = batch if len(rows) == len(messages) else batch[np.asarray(rows, dtype=np.intp)]
    return DecodedExamples(items, images)


def _request_head(
    examples: Sequence[PileupExample], model: str, version: str, sample_name: str, ids: Sequence[str] | None
) -> variants_pb2.CallVariantsRequest:
    """The request without pixels: every example's locus, alleles and depths."""
    if ids is not None and len(ids) != len(examples):
        raise ValueError(f"{len(ids)} ids for {len(examples)} examples")
    request = variants_pb2.CallVariantsRequest(model=model, version=version, sample_name=sample_name)
    for index, example in enumerate(examples):
        request.examples.add(
            id=ids[index] if ids is not None else _default_id(example),
            chrom=example.reference_name, pos=example.start + 1, ref=example.reference_bases,
            alts=example.alternate_bases, alt_allele_indices=example.alt_allele_indices,
            depth=example.call.dp, allele_depths=example.call.ad,
        )  # fmt: skip
    return request


def encode_call_request(
    examples: Sequence[PileupExample],
    model: str = "",
    version: str = "",
    sample_name: str = "",
    ids: Sequence[str] | None = None,
    shared: Placer | None = None,
) -> bytes:
    """A serialized CallVariantsRequest for family ``PileupExample`` objects, all pileups in its
    one batched ``pileups`` tensor, built with a single copy of the pixels (see
    ``genoserve.api.codecs.wire``), or, with ``shared``, copied once into shared memory.
    ``ids`` default to ``pileup_example``'s (locus, alt indices)."""
    head = _request_head(examples, model, version, sample_name, ids).SerializeToString()
    if not examples:
        return head
    images = [np.ascontiguousarray(e.image, dtype=np.uint8) for e in examples]
    shapes = {i.shape for i in images}
    if len(shapes) != 1:
        raise ValueError(f"examples have different pileup shapes: {sorted(shapes)}")
    size = sum(i.nbytes for i in images)
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=[len(images), *images[0].shape])
    if shared is not None:
        tensor.shared_memory.CopyFrom(shared.place(images))
        return head + b"".join(wire.field(_REQUEST_PILEUPS, [tensor.SerializeToString()]))
    tensor_head = tensor.SerializeToString()
    data_header = wire.field_header(_TENSOR_DATA, size)
    return wire.join_fields(
        head + wire.field_header(_REQUEST_PILEUPS, len(tensor_head) + len(data_header) + size) + tensor_head,
        _TENSOR_DATA,
        [i.data for i in images],
        size,
    )


def call_request(
    examples: Sequence[PileupExample],
    model: str = "",
    version: str = "",
    sample_name: str = "",
    ids: Sequence[str] | None = None,
    shared: Placer | None = None,
) -> variants_pb2.CallVariantsRequest:
    """``encode_call_request`` as a message (for code that wants one; sending the bytes of
    ``encode_call_request`` saves the copies protobuf makes of the pixels)."""
    return variants_pb2.CallVariantsRequest.FromString(
        encode_call_request(examples, model, version, sample_name, ids, shared)
    )


@dataclass
class ParsedCallRequest:
    """A CallVariantsRequest as the server parses it: the message without the pixels of its
    ``pileups`` tensor, which stay in the received bytes (``pileups_data``, zero-copy)."""

    message: variants_pb2.CallVariantsRequest
    pileups: tensor_pb2.Tensor | None = None
    pileups_data: memoryview | None = None


def parse_call_request(data: bytes) -> ParsedCallRequest:
    """The gRPC request deserializer for CallVariants(Stream): ``pileups.data`` is not copied."""
    split = wire.split_field(data, _REQUEST_PILEUPS)
    if split is None:  # not plain: protobuf parses it (and reports what is wrong)
        message = variants_pb2.CallVariantsRequest.FromString(data)
        return ParsedCallRequest(message, message.pileups if message.HasField("pileups") else None)
    rest, payload = split
    message = variants_pb2.CallVariantsRequest.FromString(rest)
    if payload is None:
        return ParsedCallRequest(message)
    tensor_split = wire.split_field(payload, _TENSOR_DATA)
    if tensor_split is None:
        return ParsedCallRequest(message, tensor_pb2.Tensor.FromString(bytes(payload)))
    tensor_head, pixels = tensor_split
    return ParsedCallRequest(message, tensor_pb2.Tensor.FromString(tensor_head), pixels or memoryview(b""))


def _default_id(example: PileupExample) -> str:
    return f"{example.locus}:{','.join(str(i) for i in example.alt_allele_indices)}"


def variant_call(call: VariantCall, example_ids: Sequence[str]) -> variants_pb2.VariantCall:
    return variants_pb2.VariantCall(
        chrom=call.reference_name, pos=call.start + 1, ref=call.reference_bases, alts=call.alternate_bases,
        quality=round(call.quality, 1), filter=_FILTERS.get(call.filters[0], variants_pb2.FILTER_UNSPECIFIED),
        genotype=list(call.genotype), genotype_quality=call.gq, pl=call.pl,
        genotype_probabilities=call.probabilities, depth=call.dp, allele_depths=call.ad,
        allele_fractions=call.vaf, example_ids=list(example_ids),
    )  # fmt: skip


def example_result(example_id: str, probabilities: npt.NDArray[np.floating[Any]] | None) -> variants_pb2.ExampleResult:
    return variants_pb2.ExampleResult(
        id=example_id, probabilities=[] if probabilities is None else probabilities.tolist()
    )


def site_error(field: str, message: str) -> common_pb2.ItemError:
    return _item_error(field, message)


def pileup_example(example: PileupExample, example_id: str = "") -> variants_pb2.PileupExample:
    """A family ``PileupExample`` as the request message (pileup as a uint8 tensor)."""
    return variants_pb2.PileupExample(
        id=example_id or _default_id(example),
        chrom=example.reference_name, pos=example.start + 1, ref=example.reference_bases,
        alts=example.alternate_bases, alt_allele_indices=list(example.alt_allele_indices),
        pileup=from_numpy(np.ascontiguousarray(example.image, dtype=np.uint8)),
        depth=example.call.dp, allele_depths=example.call.ad,
    )  # fmt: skip


def to_variant_call(message: variants_pb2.VariantCall, sample_name: str = "") -> VariantCall:
    """A response call back as the family's ``VariantCall`` (for writing VCFs client-side)."""
    filters = {v: k for k, v in _FILTERS.items()}
    # GLs whose truncated, min-normalised phred values are exactly the PL sent.
    gls = [-(p + 0.5) / 10.0 if p > 0 else 0.0 for p in message.pl]
    return VariantCall(
        reference_name=message.chrom, start=message.pos - 1, end=message.pos - 1 + len(message.ref),
        reference_bases=message.ref, alternate_bases=list(message.alts), quality=message.quality,
        filters=[filters.get(message.filter, "PASS")],
        genotype=(int(message.genotype[0]), int(message.genotype[1])) if len(message.genotype) == 2 else (-1, -1),
        gq=message.genotype_quality, genotype_likelihoods=gls, probabilities=list(message.genotype_probabilities),
        dp=message.depth, ad=list(message.allele_depths), vaf=[float(v) for v in message.allele_fractions],
        sample_name=sample_name,
    )  # fmt: skip
