"""DeepVariant make_examples output (tf.Example in TFRecord) <-> ``PileupExample`` (numpy).

Each calling example (DeepVariant r1.9 ``make_examples``) carries these features:

- ``image/encoded``: bytes, the pileup as raw uint8, row-major ``(height, width, channels)``;
- ``image/shape``: int64 ``[height, width, channels]`` (100, 221, 6 or 7);
- ``variant/encoded``: bytes, a Nucleus ``Variant`` (the candidate with all its alt alleles and a
  call holding the ``AD``/``DP``/``VAF`` read counts);
- ``alt_allele_indices/encoded``: bytes, a ``CallVariantsOutput.AltAlleleIndices``: the alt
  alleles (indices into ``alternate_bases``) this example shows as "the variant";
- ``locus``, ``variant_type``, ``sequencing_type`` (informational; ``label`` in training data).

The protos are the wire-compatible subsets in ``genoserve.tfexample`` and ``genoserve.nucleus``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from genoserve.core.errors import InvalidArgument
from genoserve.nucleus import variants_pb2
from genoserve.tfexample import example_pb2, feature_pb2
from genoserve.variants.checks import SiteFields, check_site, count, listed
from genoserve.variants.tfrecord import read_records, write_records

#: DeepVariant's channel enum values (deepvariant.proto ``DeepVariantChannelEnum``) by name.
CHANNEL_IDS = {
    "read_base": 1,
    "base_quality": 2,
    "mapping_quality": 3,
    "strand": 4,
    "read_supports_variant": 5,
    "base_differs_from_ref": 6,
    "insert_size": 19,
}
CHANNELS_6 = (
    "read_base",
    "base_quality",
    "mapping_quality",
    "strand",
    "read_supports_variant",
    "base_differs_from_ref",
)
CHANNELS_7 = (*CHANNELS_6, "insert_size")


@dataclass
class CallInfo:
    """Read counts make_examples stores with the candidate: depth, per-allele depths, alt fractions."""

    dp: int = 0
    ad: list[int] = field(default_factory=list)
    vaf: list[float] = field(default_factory=list)


@dataclass
class PileupExample:
    """One candidate allele set and its pileup image.

    ``start``/``end`` are 0-based half-open (VCF POS = start + 1). ``alternate_bases`` are all the
    candidate's alts; ``alt_allele_indices`` (1 or 2 indices into it) the alts this image shows.
    ``image`` is uint8 ``(height, width, channels)``, DeepVariant's layout.
    """

    reference_name: str
    start: int
    end: int
    reference_bases: str
    alternate_bases: list[str]
    alt_allele_indices: tuple[int, ...]
    image: npt.NDArray[np.uint8]
    call: CallInfo = field(default_factory=CallInfo)
    sample_name: str = ""
    label: int | None = None

    @property
    def locus(self) -> str:
        return f"{self.reference_name}:{self.start + 1}-{self.end}"


def _values(values: Iterable[variants_pb2.Value]) -> list[float]:
    out: list[float] = []
    for value in values:
        kind = value.WhichOneof("kind")
        out.append(float(value.int_value) if kind == "int_value" else float(value.number_value))
    return out


def call_info(variant: variants_pb2.Variant, where: str = "variant") -> tuple[CallInfo, str]:
    """AD/DP/VAF and the sample name from the variant's first call (empty when it has none).
    DP and AD must be whole numbers >= 0 and VAF in [0, 1] (``InvalidArgument`` naming ``where``)."""
    if not variant.calls:
        return CallInfo(), ""
    call = variant.calls[0]
    info = call.info
    field = f"{where} calls[0].info"
    dp = [count(v, f"{field}[DP]") for v in _values(info["DP"].values)] if "DP" in info else []
    ad = [count(v, f"{field}[AD]") for v in _values(info["AD"].values)] if "AD" in info else []
    vaf = _values(info["VAF"].values) if "VAF" in info else []
    for fraction in vaf:
        if not 0.0 <= fraction <= 1.0:  # NaN fails too
            raise InvalidArgument.field(f"{field}[VAF]", f"must be in [0, 1], got {fraction}")
    return CallInfo(dp[0] if dp else 0, ad, vaf), call.call_set_name


def _feature(features: feature_pb2.Features, name: str, where: str) -> feature_pb2.Feature:
    if name not in features.feature:
        raise InvalidArgument.field(where, f"missing feature {name!r}")
    return features.feature[name]


def tf_example_fields(where: str) -> SiteFields:
    """What errors call the parts of a tf.Example ``where`` (its Variant's fields, its indices)."""
    variant = f"{where} variant/encoded"
    return SiteFields(
        chrom=f"{variant} reference_name", pos=f"{variant} start", end=f"{variant} end",
        ref=f"{variant} reference_bases", alts=f"{variant} alternate_bases",
        alt_allele_indices=f"{where} alt_allele_indices/encoded", depth=f"{variant} calls[0].info[DP]",
        allele_depths=f"{variant} calls[0].info[AD]", one_based=False,
    )  # fmt: skip


def _image_shape(shape: tuple[int, ...], size: int, where: str) -> tuple[int, int, int]:
    """``image/shape`` checked against the ``size`` bytes of ``image/encoded`` (exact integers:
    no product that overflows or turns positive from two negatives)."""
    field = f"{where} image/shape"
    if len(shape) != 3:
        raise InvalidArgument.field(field, f"need 3 values [height, width, channels], got {listed(shape)}")
    if min(shape) < 1:
        raise InvalidArgument.field(field, f"each must be >= 1, got {listed(shape)}")
    height, width, channels = shape
    if height * width * channels != size:
        raise InvalidArgument.field(field, f"{listed(shape)} does not match {size} bytes of image/encoded (uint8 HWC)")
    return height, width, channels


def _label(features: feature_pb2.Features, where: str) -> int | None:
    if "label" not in features.feature:
        return None
    values = features.feature["label"].int64_list.value
    if len(values) != 1:
        raise InvalidArgument.field(f"{where} label", f"must hold one int64 when present, got {len(values)} values")
    return int(values[0])


def parse_example(data: bytes, where: str = "example", max_alts: int | None = None) -> PileupExample:
    """Decode one serialized tf.Example from make_examples; ``where`` names it in errors.

    The candidate passes the same site, allele and read-count checks as request examples
    (``genoserve.variants.checks.check_site``), at most ``max_alts`` alts when given.
    """
    try:
        example = example_pb2.Example.FromString(data)
        features = example.features
        shape = tuple(int(x) for x in _feature(features, "image/shape", where).int64_list.value)
        [encoded] = _feature(features, "image/encoded", where).bytes_list.value
        [variant_bytes] = _feature(features, "variant/encoded", where).bytes_list.value
        [indices_bytes] = _feature(features, "alt_allele_indices/encoded", where).bytes_list.value
        variant = variants_pb2.Variant.FromString(variant_bytes)
        indices = variants_pb2.CallVariantsOutput.AltAlleleIndices.FromString(indices_bytes)
    except (DecodeError, ValueError) as exc:
        raise InvalidArgument.field(where, f"not a DeepVariant example: {exc}") from exc
    height, width, channels = _image_shape(shape, len(encoded), where)
    fields = tf_example_fields(where)
    info, sample = call_info(variant, f"{where} variant/encoded")
    site = check_site(
        variant.reference_name, int(variant.start), int(variant.end), variant.reference_bases,
        variant.alternate_bases, indices.indices, info.ad, fields, max_alts,
    )  # fmt: skip
    label = _label(features, where)
    image = np.frombuffer(encoded, dtype=np.uint8).reshape(height, width, channels)
    return PileupExample(
        reference_name=variant.reference_name,
        start=int(variant.start),
        end=int(variant.end),
        reference_bases=site.reference_bases,
        alternate_bases=site.alternate_bases,
        alt_allele_indices=tuple(int(i) for i in indices.indices),
        image=image,
        call=info,
        sample_name=sample,
        label=label,
    )


def read_examples(path: str | Path) -> Iterator[PileupExample]:
    """Every example of a make_examples TFRecord file (gzip or not), CRC-checked, in file order."""
    for index, data in enumerate(read_records(path)):
        yield parse_example(data, f"{path}: record {index}")


def to_variant(example: PileupExample) -> variants_pb2.Variant:
    """The Nucleus Variant make_examples would store for ``example`` (DP, AD and VAF with it when
    its AD is known)."""
    variant = variants_pb2.Variant(
        reference_name=example.reference_name,
        start=example.start,
        end=example.end,
        reference_bases=example.reference_bases,
        alternate_bases=example.alternate_bases,
    )
    call = variant.calls.add(call_set_name=example.sample_name, genotype=[-1, -1])
    if example.call.ad:
        call.info["DP"].values.add(int_value=example.call.dp)
        for depth in example.call.ad:
            call.info["AD"].values.add(int_value=depth)
        for fraction in example.call.vaf:
            call.info["VAF"].values.add(number_value=fraction)
    return variant


def serialize_example(example: PileupExample) -> bytes:
    """``example`` as a serialized tf.Example with make_examples' feature names."""
    features = feature_pb2.Features()
    image = np.ascontiguousarray(example.image, dtype=np.uint8)
    features.feature["image/encoded"].bytes_list.value.append(image.tobytes())
    features.feature["image/shape"].int64_list.value.extend(image.shape)
    features.feature["variant/encoded"].bytes_list.value.append(to_variant(example).SerializeToString())
    indices = variants_pb2.CallVariantsOutput.AltAlleleIndices(indices=example.alt_allele_indices)
    features.feature["alt_allele_indices/encoded"].bytes_list.value.append(indices.SerializeToString())
    features.feature["locus"].bytes_list.value.append(example.locus.encode())
    if example.label is not None:
        features.feature["label"].int64_list.value.append(example.label)
    return example_pb2.Example(features=features).SerializeToString()


def write_examples(path: str | Path, examples: Iterable[PileupExample]) -> int:
    """Write ``examples`` as a make_examples-style TFRecord (gzip for ``.gz``); returns the count."""
    return write_records(path, (serialize_example(e) for e in examples))
