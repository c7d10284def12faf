"""The checks one example's site, alleles and read counts must pass, wherever the example comes from
(request fields, a make_examples tf.Example): one function, so every path refuses the same things
with the same rules. Only the field names in the errors differ (``SiteFields``).

The alt count is checked first, before anything else looks at the alleles: a site with n alts has
n(n+1)/2 examples (one per alt and per alt pair) and (n+1)(n+2)/2 genotypes, so an unbounded n
lets one small request ask for work and memory quadratic in its size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from genoserve.core.errors import InvalidArgument, quoted

BASES = frozenset("ACGTN")
#: Largest read count (DP, each AD, their sum): the response's and the VCF's integers are 32-bit.
MAX_COUNT = 2**31 - 1

#: Where the default limit of 32 alt alleles per site (setting ``variants.max_alts_per_site``)
#: comes from. DeepVariant's own make_examples (r1.9 ``pileup_image._alt_allele_combinations``)
#: makes an example for every alt and alt pair with no cap that we found; the tools its output
#: goes through do cap it: GLnexus's ``DeepVariant`` configuration preset (``config_presets_yml``
#: in src/cli_utils.cc) prunes sites past ``max_alleles_per_site: 32``, and NVIDIA Parabricks'
#: DeepVariant handled 32 alt alleles per candidate (64 since its 4.2.0-1 release). Real candidates
#: stay far below it: make_examples needs an allele in >= 6% of the reads
#: (``vsc_min_fraction_indels``), so about 16 alts at most.
MAX_ALTS_SOURCES = (
    "https://github.com/dnanexus-rnd/GLnexus src/cli_utils.cc (config preset DeepVariant)",
    "https://docs.nvidia.com/clara/latest/whatsnew/bugfixes_v4.2.0-1.html",
)


@dataclass(frozen=True)
class SiteFields:
    """What errors call each part of an example; ``one_based`` when ``pos`` is VCF's POS rather
    than a 0-based start."""

    chrom: str
    pos: str
    end: str
    ref: str
    alts: str
    alt_allele_indices: str
    depth: str
    allele_depths: str
    one_based: bool


@dataclass(frozen=True)
class CheckedSite:
    """An example's site after the checks: alleles in upper case, alt indices sorted."""

    reference_bases: str
    alternate_bases: list[str]
    alt_allele_indices: tuple[int, ...]


def alt_set_count(n_alts: int) -> int:
    """How many examples DeepVariant makes for a site with ``n_alts`` alts: one per alt and one
    per alt pair, n(n+1)/2 (counted, never listed)."""
    return n_alts * (n_alts + 1) // 2


def valid_alt_set(indices: tuple[int, ...], n_alts: int) -> bool:
    """``indices`` is one alt or a pair of distinct alts, sorted, in range."""
    return (len(indices) == 1 and 0 <= indices[0] < n_alts) or (
        len(indices) == 2 and 0 <= indices[0] < indices[1] < n_alts
    )


def listed(values: Sequence[int], most: int = 8) -> str:
    """``[1, 2]``, or past ``most`` values the first few and how many there are: errors echo
    what a client sent, and an error's message travels in size-limited gRPC metadata."""
    if len(values) <= most:
        return str(list(values))
    return f"[{', '.join(str(v) for v in values[:4])}, ... ({len(values)} values)]"


def _label(field: str) -> str:
    """``examples[2].alts`` -> ``alts``; ``... variant/encoded alternate_bases`` -> ``alternate_bases``."""
    return field.rsplit(" ", 1)[-1].rsplit(".", 1)[-1]


def count(value: float, field: str) -> int:
    """A read count: a whole number in [0, ``MAX_COUNT``] (not NaN, not infinite)."""
    if not (math.isfinite(value) and 0 <= value <= MAX_COUNT and value == int(value)):
        raise InvalidArgument.field(field, f"must be a whole number >= 0 and <= {MAX_COUNT}, got {value}")
    return int(value)


def check_alleles(ref: str, alts: Sequence[str], fields: SiteFields, max_alts: int | None) -> tuple[str, list[str]]:
    """REF and the alts, upper-cased: A/C/G/T/N, non-empty, each alt distinct and not REF, and at
    most ``max_alts`` alts (checked first)."""
    if max_alts is not None and len(alts) > max_alts:
        raise InvalidArgument.field(
            fields.alts,
            f"at most {max_alts} alt alleles per site (setting variants.max_alts_per_site), got {len(alts)}",
        )
    upper_ref = ref.upper()
    if not upper_ref or not BASES.issuperset(upper_ref):
        raise InvalidArgument.field(fields.ref, f"must be non-empty A/C/G/T/N, got {quoted(ref)}")
    if not alts:
        raise InvalidArgument.field(fields.alts, "at least one alt allele is required")
    name = _label(fields.alts)
    seen: dict[str, int] = {}
    upper_alts: list[str] = []
    for index, alt in enumerate(alts):
        upper = alt.upper()
        if not upper or not BASES.issuperset(upper):
            raise InvalidArgument.field(fields.alts, f"{name}[{index}] must be non-empty A/C/G/T/N, got {quoted(alt)}")
        if upper == upper_ref:
            raise InvalidArgument.field(fields.alts, f"{name}[{index}] {quoted(alt)} equals REF")
        if upper in seen:
            raise InvalidArgument.field(fields.alts, f"{name}[{index}] {quoted(alt)} repeats {name}[{seen[upper]}]")
        seen[upper] = index
        upper_alts.append(upper)
    return upper_ref, upper_alts


def check_site(
    chrom: str,
    start: int,
    end: int | None,
    ref: str,
    alts: Sequence[str],
    alt_allele_indices: Sequence[int],
    allele_depths: Sequence[int],
    fields: SiteFields,
    max_alts: int | None = None,
) -> CheckedSite:
    """Check one example (``start`` 0-based; ``end``, when the source gives one, must be
    ``start + len(ref)``; ``allele_depths`` REF first, or empty). Raises ``InvalidArgument``
    naming the field (from ``fields``) and the rule."""
    upper_ref, upper_alts = check_alleles(ref, alts, fields, max_alts)
    if not chrom or any(c.isspace() for c in chrom):
        raise InvalidArgument.field(fields.chrom, f"is required, without whitespace, got {quoted(chrom)}")
    base = 1 if fields.one_based else 0
    if start < 0:
        raise InvalidArgument.field(fields.pos, f"must be >= {base} ({base}-based), got {start + base}")
    if end is not None and end != start + len(ref):
        raise InvalidArgument.field(fields.end, f"must be start + len(REF) = {start + len(ref)}, got {end}")
    indices = tuple(sorted(int(i) for i in alt_allele_indices))
    n = len(upper_alts)
    if not 1 <= len(indices) <= 2 or len(set(indices)) != len(indices) or not all(0 <= i < n for i in indices):
        raise InvalidArgument.field(
            fields.alt_allele_indices,
            f"need 1 or 2 distinct indices into {n} alts, got {listed(alt_allele_indices)}",
        )
    if allele_depths and len(allele_depths) != n + 1:
        raise InvalidArgument.field(fields.allele_depths, f"need {n + 1} values (REF first), got {len(allele_depths)}")
    return CheckedSite(upper_ref, upper_alts, indices)
