"""Variant effect windows against a reference genome (kipoi-veff's ref/alt/diff/logit_diff).

For a variant at 1-based ``pos`` with alleles REF and ALT, both windows have length L and put the
variant's first base at index L // 2: the same upstream reference bases, then the allele, then the
reference downstream of REF. Beyond a contig's ends the window is padded with N.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from genoserve.core.errors import FailedPrecondition, quoted

BASES = set("ACGTN")
#: Largest REF or ALT allele scored ("small indels").
MAX_ALLELE = 50


def unknown_reference(name: str, registered: Iterable[str]) -> str:
    """The rule broken when a request names no registered reference (or none, and there is no default)."""
    names = sorted(registered)
    if not names:
        return (
            f"no reference genome is registered on the server{f' (asked for {quoted(name)})' if name else ''}; "
            "register FASTAs in the setting binding.references (name: path), "
            """e.g. GENOSERVE_BINDING__REFERENCES='{"hg19": "/data/hg19.fa"}'"""
        )
    if not name:
        return f"no reference named and binding.default_reference is not set; name one of {names}"
    return f"unknown reference {quoted(name)}; registered: {names}"


@dataclass(frozen=True)
class VariantSpec:
    id: str
    chrom: str
    pos: int
    ref: str
    alt: str


class ReferenceGenome:
    """A FASTA (plain or bgzip, with .fai/.gzi) opened once; fetches are serialised by a lock."""

    def __init__(self, name: str, path: Path) -> None:
        import pysam

        self.name = name
        self.path = path
        try:
            self._fasta = pysam.FastaFile(str(path))
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"reference {name}: cannot open {path}: {exc}") from exc
        self.lengths = dict(zip(self._fasta.references, self._fasta.lengths, strict=True))
        self._lock = threading.Lock()

    def fetch(self, chrom: str, start: int, end: int) -> str:
        """0-based half-open [start, end), upper case, N-padded outside the contig."""
        size = self.lengths[chrom]
        left = max(0, -start)
        right = max(0, end - size)
        with self._lock:
            bases = self._fasta.fetch(chrom, max(0, start), min(end, size)) if start < size and end > 0 else ""
        return "N" * left + bases.upper() + "N" * right

    def close(self) -> None:
        self._fasta.close()


def check_variant(variant: VariantSpec, reference: ReferenceGenome) -> str | None:
    """The rule this variant breaks, or None (REF is compared with the reference here)."""
    if variant.chrom not in reference.lengths:
        known = sorted(reference.lengths)[:5]
        return f"chrom {quoted(variant.chrom)} is not in reference {reference.name} (contigs: {known}...)"
    if variant.pos < 1 or variant.pos > reference.lengths[variant.chrom]:
        return f"pos {variant.pos} is outside {variant.chrom} (1..{reference.lengths[variant.chrom]})"
    for name, allele in (("ref", variant.ref), ("alt", variant.alt)):
        if not allele:
            return f"{name} is empty"
        if not set(allele.upper()) <= BASES:
            return f"{name} {quoted(allele)} must be bases A, C, G, T, N (symbolic and '*' alleles are not scored)"
        if len(allele) > MAX_ALLELE:
            return f"{name} has {len(allele)} bases; at most {MAX_ALLELE} are scored (small indels)"
    if variant.ref.upper() == variant.alt.upper():
        return "alt equals ref"
    actual = reference.fetch(variant.chrom, variant.pos - 1, variant.pos - 1 + len(variant.ref))
    if actual != variant.ref.upper():
        return f"REF {quoted(variant.ref)} does not match the reference {actual!r} at {variant.chrom}:{variant.pos}"
    return None


def windows(variant: VariantSpec, reference: ReferenceGenome, length: int) -> tuple[str, str]:
    """(ref window, alt window), each ``length`` bases with the variant starting at ``length // 2``."""
    start = variant.pos - 1
    left = length // 2
    upstream = reference.fetch(variant.chrom, start - left, start)
    downstream = reference.fetch(variant.chrom, start + len(variant.ref), start + len(variant.ref) + length)
    ref = (upstream + variant.ref.upper() + downstream)[:length]
    alt = (upstream + variant.alt.upper() + downstream)[:length]
    return ref, alt
