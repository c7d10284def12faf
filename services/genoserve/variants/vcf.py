"""VCF output with pysam: DeepVariant's header (FILTER/INFO/FORMAT definitions), contigs from the
reference, the sample named after the BAM read group; bgzip + tabix for ``.vcf.gz``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pysam

from genoserve.variants.postprocess import VariantCall

FILTERS = (
    ("RefCall", "Genotyping model thinks this site is reference."),
    ("LowQual", "Confidence in this variant being real is below calling threshold."),
    ("NoCall", "Site has depth=0 resulting in no call."),
)
FORMATS = (
    ("GT", "1", "String", "Genotype"),
    ("GQ", "1", "Integer", "Conditional genotype quality"),
    ("DP", "1", "Integer", "Read depth"),
    ("AD", "R", "Integer", "Read depth for each allele"),
    ("VAF", "A", "Float", "Variant allele fractions."),
    ("PL", "G", "Integer", "Phred-scaled genotype likelihoods rounded to the closest integer"),
)


def make_header(contigs: Sequence[tuple[str, int]], sample: str, source: str = "genoserve") -> pysam.VariantHeader:
    """A VCF 4.2 header with DeepVariant's filter and format definitions."""
    header = pysam.VariantHeader()
    for name, description in FILTERS:
        header.filters.add(name, None, None, description)
    header.info.add("END", 1, "Integer", "End position (for use with symbolic alleles)")
    for name, number, kind, description in FORMATS:
        header.formats.add(name, number, kind, description)
    header.add_line(f"##source={source}")
    for name, length in contigs:
        if length:
            header.contigs.add(name, length=length)
        else:
            header.contigs.add(name)
    header.add_sample(sample or "SAMPLE")
    return header


def read_contigs(path: str | Path, field: str = "contigs") -> list[tuple[str, int]]:
    """(name, length) per line of a FASTA index (``.fai``) or any ``NAME<TAB>LENGTH[...]`` file
    (e.g. ``cut -f1,2 ref.fa.fai``); ``#`` lines skipped. Errors name the file and line."""
    from genoserve.core.errors import InvalidArgument

    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument.field(field, f"{path}: unreadable: {exc}") from exc
    contigs: list[tuple[str, int]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            name, length = parts[0], int(parts[1])
        except (IndexError, ValueError):
            name, length = "", 0
        if not name or length < 1:
            raise InvalidArgument.field(
                field, f"{path}: line {number}: expected NAME<TAB>LENGTH (a .fai), got {line!r}"
            )
        contigs.append((name, length))
    if not contigs:
        raise InvalidArgument.field(field, f"{path}: no contigs (expected NAME<TAB>LENGTH lines, a .fai)")
    return contigs


def reference_contigs(reference: str | Path) -> list[tuple[str, int]]:
    """(name, length) of every contig of an indexed FASTA."""
    with pysam.FastaFile(str(reference)) as fasta:
        return list(zip(fasta.references, fasta.lengths, strict=True))


def write_vcf(
    path: str | Path,
    calls: Iterable[VariantCall],
    contigs: Sequence[tuple[str, int]],
    sample: str,
    *,
    index: bool | None = None,
) -> Path:
    """Write ``calls``, in the order given (sorted by contig and position for an index:
    ``pipeline.write_calls`` sorts them), to ``path``; ``.gz`` is bgzipped and, by default,
    tabix-indexed.

    The file is written under a temporary name and renamed, so a reader never sees half a VCF.
    """
    path = Path(path)
    compressed = path.suffix == ".gz"
    index = compressed if index is None else index
    header = make_header(contigs, sample)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with pysam.VariantFile(str(tmp), "wz" if compressed else "w", header=header) as out:
        for call in calls:
            record = out.new_record(
                contig=call.reference_name,
                start=call.start,
                stop=call.end,
                alleles=(call.reference_bases, *call.alternate_bases),
                qual=round(call.quality, 1),
                filter=call.filters,
            )
            fmt = record.samples[0]
            fmt["GT"] = tuple(None if a < 0 else a for a in call.genotype)
            fmt["GQ"] = call.gq
            fmt["DP"] = call.dp
            if call.ad:
                fmt["AD"] = tuple(call.ad)
            if call.vaf:
                fmt["VAF"] = tuple(round(v, 6) for v in call.vaf)
            fmt["PL"] = tuple(call.pl)
            out.write(record)
    os.replace(tmp, path)
    if index:
        pysam.tabix_index(str(path), preset="vcf", force=True)
    return path
