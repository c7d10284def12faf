"""Haplotype-aware comparison of nearby variants, for calls whose representation differs from truth.

The idea is RTG vcfeval's (Cleary et al. 2015, "Comparing variant call files for performance
benchmarking of next-generation sequencing variant calling pipelines", bioRxiv 023754; also what
hap.py uses): two sets of variants are equivalent when applying each set's genotyped alleles to the
reference yields the same haplotype sequences, whatever the records look like (an MNP vs two SNPs,
a complex allele vs a deletion and a SNP, an indel placed differently in a repeat).

Here, for one small cluster of sites at a time (written for the evaluation's leftovers, not as
a general search): every phasing of unphased heterozygous genotypes is enumerated (capped), and

* a **genotype match** needs one phasing per side with the same unordered pair of haplotypes;
* an **allele match** (vcfeval's ``--squash-ploidy``) needs the same single haplotype when every
  site's called alt allele is applied (the alleles agree, the zygosity does not).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

#: At most this many phasings (or allele choices) are tried per side of a cluster.
MAX_PHASINGS = 256

Match = Literal["genotype", "allele"]


@dataclass(frozen=True)
class Site:
    """A genotyped record: 0-based ``start``, ``alleles`` REF first, ``genotype`` as allele indices
    (-1 missing, read as REF; one entry: haploid, read as homozygous)."""

    start: int
    alleles: tuple[str, ...]
    genotype: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.start + len(self.alleles[0])

    def diploid(self) -> tuple[int, int]:
        called = [max(g, 0) for g in self.genotype] or [0]
        return (called[0], called[-1]) if len(called) <= 2 else (called[0], called[1])


def _haplotype(segment: str, offset: int, edits: Sequence[tuple[int, int, str]]) -> str | None:
    """``segment`` (reference from ``offset``) with ``edits`` (start, end, sequence) applied, or
    None when two edits overlap (they cannot sit on one haplotype)."""
    out: list[str] = []
    cursor = offset
    for start, end, sequence in sorted(edits):
        if start < cursor:
            return None
        out.append(segment[cursor - offset : start - offset])
        out.append(sequence)
        cursor = end
    out.append(segment[cursor - offset :])
    return "".join(out)


def _phasings(sites: Sequence[Site]) -> Iterator[tuple[tuple[int, int], ...]]:
    """Each site's two alleles in both orders (the first het fixed: pairs are compared unordered)."""
    options: list[list[tuple[int, int]]] = []
    fixed = False
    for site in sites:
        a, b = site.diploid()
        if a == b or not fixed:
            options.append([(a, b)])
            fixed = fixed or a != b
        else:
            options.append([(a, b), (b, a)])
    return itertools.islice(itertools.product(*options), MAX_PHASINGS)


def haplotype_pairs(sites: Sequence[Site], segment: str, offset: int) -> set[tuple[str, str]]:
    """Every unordered pair of haplotypes the genotypes of ``sites`` allow over ``segment``."""
    pairs: set[tuple[str, str]] = set()
    for phasing in _phasings(sites):
        haplotypes = []
        for side in (0, 1):
            edits = [
                (site.start, site.end, site.alleles[alleles[side]])
                for site, alleles in zip(sites, phasing, strict=True)
                if alleles[side] > 0
            ]
            haplotypes.append(_haplotype(segment, offset, edits))
        first, second = haplotypes
        if first is not None and second is not None:
            pairs.add((first, second) if first <= second else (second, first))
    return pairs


def squashed_haplotypes(sites: Sequence[Site], segment: str, offset: int) -> set[str]:
    """Every single haplotype with one called alt allele of each site applied (genotype ignored)."""
    choices = [sorted({g for g in site.diploid() if g > 0}) for site in sites]
    out: set[str] = set()
    for chosen in itertools.islice(itertools.product(*choices), MAX_PHASINGS):
        edits = [(s.start, s.end, s.alleles[a]) for s, a in zip(sites, chosen, strict=True)]
        haplotype = _haplotype(segment, offset, edits)
        if haplotype is not None:
            out.add(haplotype)
    return out


def compare(truth: Sequence[Site], calls: Sequence[Site], segment: str, offset: int) -> Match | None:
    """How ``calls`` match ``truth`` over ``segment`` (reference from 0-based ``offset``, covering
    every site): ``"genotype"``, ``"allele"``, or None. Sites whose REF disagrees with the
    reference never match."""
    for site in (*truth, *calls):
        if segment[site.start - offset : site.end - offset].upper() != site.alleles[0].upper():
            return None
    segment = segment.upper()
    truth = [Site(s.start, tuple(a.upper() for a in s.alleles), s.genotype) for s in truth]
    calls = [Site(s.start, tuple(a.upper() for a in s.alleles), s.genotype) for s in calls]
    if haplotype_pairs(truth, segment, offset) & haplotype_pairs(calls, segment, offset):
        return "genotype"
    if squashed_haplotypes(truth, segment, offset) & squashed_haplotypes(calls, segment, offset):
        return "allele"
    return None


def best_match(
    truth: Sequence[Site], calls: Sequence[Site], segment: str, offset: int, max_sites: int = 10
) -> tuple[list[int], list[int], Match] | None:
    """The largest subsets of ``truth`` and ``calls`` (indices) that match each other, genotype
    matches preferred at equal size; all of each when there are more than ``max_sites`` sites."""
    if len(truth) + len(calls) > max_sites:
        found = compare(truth, calls, segment, offset)
        return (list(range(len(truth))), list(range(len(calls))), found) if found else None
    subsets = sorted(
        ((t, c) for t in _nonempty_subsets(len(truth)) for c in _nonempty_subsets(len(calls))),
        key=lambda pair: -(len(pair[0]) + len(pair[1])),
    )
    best: tuple[list[int], list[int], Match] | None = None
    for t, c in subsets:
        if best is not None and len(t) + len(c) < len(best[0]) + len(best[1]):
            break
        found = compare([truth[i] for i in t], [calls[i] for i in c], segment, offset)
        if found == "genotype":
            return t, c, found
        if found == "allele" and best is None:
            best = (t, c, found)
    return best


def _nonempty_subsets(n: int) -> list[list[int]]:
    return [list(s) for size in range(n, 0, -1) for s in itertools.combinations(range(n), size)]
