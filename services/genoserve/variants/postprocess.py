"""Genotype probabilities -> VCF-ready calls, as DeepVariant's postprocess_variants does (r1.9).

Facts taken from postprocess_variants.py and nucleus genomics_math / variant_utils:

- probabilities are ``[P(0/0), P(0/1), P(1/1)]`` per example; bounded at ``1 - 1.25e-10``
  (``_MAX_CONFIDENCE``), so GQ and QUAL are capped near 99;
- GQ = round(phred(1 - P(called genotype))); QUAL = phred(1 - min(P(non-ref), 1)) = phred(P(0/0)),
  rounded to 7 decimals (written with 1 decimal);
- GL = log10(max(P, 1.25e-10)); PL = int(-10 * GL - min(-10 * GL)) (truncated, as nucleus writes it);
- multi-allelic sites: every alt whose single-alt example has QUAL < ``multi_allelic_qual_filter`` (1)
  is pruned (keeping the best one if all would go); each genotype's probability is the minimum over
  the examples that show its alleles, then the vector is renormalised; the genotype order is the
  VCF one (00, 01, 11, 02, 12, 22); common allele suffixes are trimmed afterwards;
- filters: NoCall (sum(AD) == 0; GT ./.), RefCall (called 0/0), LowQual (QUAL < ``qual_filter`` = 1),
  else PASS; a RefCall with GQ < ``cnn_homref_call_min_gq`` (20) gets GT ./.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from genoserve.core.errors import InvalidArgument
from genoserve.variants.checks import alt_set_count, valid_alt_set
from genoserve.variants.examples import CallInfo

MAX_CONFIDENCE = 1.0 - 1.25e-10
MIN_PROBABILITY = 1.25e-10
QUAL_PRECISION = 7


@dataclass(frozen=True)
class PostprocessOptions:
    qual_filter: float = 1.0
    multi_allelic_qual_filter: float = 1.0
    cnn_homref_call_min_gq: float = 20.0


@dataclass
class ExampleCall:
    """One example's prediction: the candidate, which alts it showed, and its 3 probabilities."""

    reference_name: str
    start: int
    end: int
    reference_bases: str
    alternate_bases: list[str]
    alt_allele_indices: tuple[int, ...]
    probabilities: tuple[float, float, float]
    call: CallInfo = field(default_factory=CallInfo)
    sample_name: str = ""


@dataclass
class VariantCall:
    """A VCF record for one site. ``genotype`` uses -1 for a missing allele; ``start`` is 0-based."""

    reference_name: str
    start: int
    end: int
    reference_bases: str
    alternate_bases: list[str]
    quality: float
    filters: list[str]
    genotype: tuple[int, int]
    gq: int
    genotype_likelihoods: list[float]
    probabilities: list[float]
    dp: int
    ad: list[int]
    vaf: list[float]
    sample_name: str = ""

    @property
    def pl(self) -> list[int]:
        """Phred-scaled likelihoods, normalised to a minimum of 0 and truncated to integers."""
        if not self.genotype_likelihoods:
            return []
        phred = [-10.0 * gl for gl in self.genotype_likelihoods]
        low = min(phred)
        return [int(p - low) for p in phred]

    @property
    def is_variant(self) -> bool:
        return any(a > 0 for a in self.genotype)


def ptrue_to_bounded_phred(ptrue: float) -> float:
    """Phred of ``1 - ptrue`` with ``ptrue`` capped at ``MAX_CONFIDENCE``."""
    if not 0.0 <= ptrue <= 1.0 + 1e-9:
        raise InvalidArgument.field("probabilities", f"{ptrue} is not a probability in [0, 1]")
    return -10.0 * math.log10(1.0 - min(ptrue, MAX_CONFIDENCE))


def bounded_log10(p: float) -> float:
    return math.log10(max(p, MIN_PROBABILITY))


def compute_quals(probabilities: Sequence[float], index: int) -> tuple[int, float]:
    """GQ of genotype ``index`` and the site QUAL."""
    gq = round(ptrue_to_bounded_phred(probabilities[index]))
    qual = ptrue_to_bounded_phred(min(sum(probabilities[1:]), 1.0))
    return int(gq), round(qual, QUAL_PRECISION)


def genotype_order(n_alleles: int) -> list[tuple[int, int]]:
    """VCF genotype order for a diploid: (0,0), (0,1), (1,1), (0,2), (1,2), (2,2), ..."""
    return [(i, j) for j in range(n_alleles) for i in range(j + 1)]


def genotype_at(index: int) -> tuple[int, int]:
    """``genotype_order(n)[index]`` (for any n > the genotype's alleles), without the list."""
    j = (math.isqrt(8 * index + 1) - 1) // 2
    return index - j * (j + 1) // 2, j


def simplify_alleles(alleles: list[str]) -> list[str]:
    """Trim the suffix common to every allele, leaving at least one base each."""
    shortest = min(len(a) for a in alleles)
    common = 0
    for i in range(1, shortest):
        if len({a[-i] for a in alleles}) != 1:
            break
        common = i
    return [a[:-common] for a in alleles] if common else alleles


def _alts_to_remove(group: list[ExampleCall], qual_filter: float) -> set[str]:
    alts = group[0].alternate_bases
    remove: set[str] = set()
    best: tuple[float, str] | None = None
    for example in group:
        if len(example.alt_allele_indices) != 1:
            continue
        _, qual = compute_quals(example.probabilities, 0)
        allele = alts[example.alt_allele_indices[0]]
        if best is None or best[0] < qual:
            best = (qual, allele)
        if qual < qual_filter:
            remove.add(allele)
    if best is not None and len(remove) == len(alts):
        remove.discard(best[1])
    return remove


def _check_group(group: list[ExampleCall]) -> None:
    """``group`` has exactly one example per alt and per alt pair (counted: for n alts, the n(n+1)/2
    sets are never listed, so the work follows the examples given, not n squared)."""
    n = len(group[0].alternate_bases)
    want = alt_set_count(n)
    sets = {e.alt_allele_indices for e in group}
    if len(group) != want or len(sets) != want or not all(valid_alt_set(s, n) for s in sets):
        first = group[0]
        got = sorted(list(e.alt_allele_indices) for e in group)
        shown = f"{got[:12]}{' ...' if len(got) > 12 else ''}"
        raise InvalidArgument.field(
            "examples",
            f"{first.reference_name[:40]}:{first.start + 1}: alt_allele_indices {shown} do not cover the "
            f"{n} alts as DeepVariant does (one example per alt and per alt pair: {want} examples, "
            f"got {len(group)})",
        )


def merge_predictions(group: list[ExampleCall], options: PostprocessOptions) -> tuple[list[str], list[float], set[str]]:
    """Alleles (ref first), per-genotype probabilities and pruned alts for one site's examples."""
    first = group[0]
    # Every alt and alt pair once: a lone example of a multi-allelic site would give 3 genotype
    # probabilities for a site with more genotypes (a PL the VCF cannot hold).
    _check_group(group)
    if len(group) == 1:
        return [first.reference_bases, *first.alternate_bases], list(first.probabilities), set()
    removed = _alts_to_remove(group, options.multi_allelic_qual_filter)
    ref = first.reference_bases
    probs: dict[tuple[str, str], list[float]] = {}
    for example in group:
        shown = {first.alternate_bases[i] for i in example.alt_allele_indices}
        if shown & removed:
            continue
        p11, p12, p22 = example.probabilities
        for set1, set2, p in (({ref}, {ref}, p11), ({ref}, shown, p12), (shown, shown, p22)):
            for a in set1:
                for b in set2:
                    probs.setdefault((a, b), []).append(p)
    alleles = [ref, *(a for a in first.alternate_bases if a not in removed)]
    predictions = [min(probs.get((alleles[i], alleles[j]), [0.0])) for i, j in genotype_order(len(alleles))]
    if sum(predictions) == 0:
        predictions = [1.0] * len(predictions)
    total = sum(predictions)
    return alleles, [p / total for p in predictions], removed


def call_site(group: list[ExampleCall], options: PostprocessOptions | None = None) -> VariantCall:
    """One VCF-ready call from all the examples of one candidate site."""
    options = options or PostprocessOptions()
    first = group[0]
    alleles, predictions, removed = merge_predictions(group, options)
    # Per-allele fields follow the retained alleles.
    keep = [True] + [a not in removed for a in first.alternate_bases]
    ad = [d for d, k in zip(first.call.ad, keep, strict=False) if k]
    vaf = [v for v, k in zip(first.call.vaf, keep[1:], strict=False) if k]
    simplified = simplify_alleles(alleles)
    index = max(range(len(predictions)), key=lambda i: predictions[i])
    genotype: tuple[int, int] = genotype_at(index)
    gq, qual = compute_quals(predictions, index)
    gls = [bounded_log10(p) for p in predictions]
    if first.call.ad and sum(ad) == 0:
        genotype, gls, gq = (-1, -1), [0.0, 0.0], 0
    if genotype == (-1, -1):
        filters = ["NoCall"]
    elif genotype == (0, 0):
        filters = ["RefCall"]
    elif qual < options.qual_filter:
        filters = ["LowQual"]
    else:
        filters = ["PASS"]
    if filters == ["RefCall"] and gq < options.cnn_homref_call_min_gq:
        genotype = (-1, -1)
    return VariantCall(
        reference_name=first.reference_name,
        start=first.start,
        end=first.start + len(simplified[0]),
        reference_bases=simplified[0],
        alternate_bases=simplified[1:],
        quality=qual,
        filters=filters,
        genotype=genotype,
        gq=gq,
        genotype_likelihoods=gls,
        probabilities=predictions,
        dp=first.call.dp,
        ad=ad,
        vaf=vaf,
        sample_name=first.sample_name,
    )


def group_sites(examples: Iterable[ExampleCall]) -> list[list[ExampleCall]]:
    """Examples grouped by site (contig, start, end, alleles), in first-seen order."""
    groups: dict[tuple[str, int, int, str, tuple[str, ...]], list[ExampleCall]] = {}
    for example in examples:
        key = (
            example.reference_name,
            example.start,
            example.end,
            example.reference_bases,
            tuple(example.alternate_bases),
        )
        groups.setdefault(key, []).append(example)
    return list(groups.values())


def postprocess(examples: Iterable[ExampleCall], options: PostprocessOptions | None = None) -> list[VariantCall]:
    """Calls for every site, sorted by contig order of appearance and position."""
    calls = [call_site(group, options) for group in group_sites(examples)]
    contigs: dict[str, int] = {}
    for call in calls:
        contigs.setdefault(call.reference_name, len(contigs))
    return sorted(calls, key=lambda c: (contigs[c.reference_name], c.start, c.end))
