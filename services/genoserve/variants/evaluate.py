"""hap.py-like comparison of calls with a truth set: allele matching after normalisation, then
haplotype-aware matching of what is left.

1. Each non-reference allele in a genotype (GT containing it) of a PASS call, and of a truth
   record, becomes one (contig, pos, ref, alt) allele, normalised as vt/bcftools do: common suffix
   trimmed, indels left-aligned through repeats against the reference, common prefix trimmed to
   one anchor base. Alleles are counted inside the confident regions (by start) and restricted to
   ``regions``. Alleles present on both sides match.
2. Alleles still unmatched are compared by haplotype, as RTG vcfeval does (see
   ``genoserve.variants.haplotypes``): the records of both sides are grouped into clusters (a
   record joins a cluster when it starts within ``cluster_distance`` bp of the cluster's end); in
   each cluster the records with unmatched alleles are applied to the reference (every phasing of
   unphased hets) and the largest subsets of truth and call records that give the same haplotypes
   match. So an MNP matches the two SNPs it is made of, a complex allele the deletion and SNP it
   contains, whatever the representation.

Counts, as hap.py reports them: ``tp`` (truth alleles matched; TRUTH.TP), ``fn`` (truth alleles
unmatched), ``query_tp`` (call alleles matched; QUERY.TP), ``fp`` (call alleles unmatched);
precision = query_tp / (query_tp + fp), recall = tp / (tp + fn). SNP when ref and alt are one
base each, INDEL otherwise (an MNP counts as INDEL). ``genotype_matches`` counts truth alleles
matched with the truth's genotype (same zygosity; for haplotype matches, the same haplotype pair);
``haplotype_tp`` the truth alleles matched only in step 2.

    python -m genoserve.variants.evaluate --calls calls.vcf.gz --truth truth.vcf.gz \
        --confident truth.bed --reference ref.fa.gz --regions chr20:10000000-10010000
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pysam

from genoserve.core.errors import GenoserveError, InvalidArgument
from genoserve.variants.haplotypes import Match, Site, best_match

Fetch = Callable[[str, int, int], str]


@dataclass(frozen=True)
class Allele:
    contig: str
    pos: int  # 0-based
    ref: str
    alt: str

    @property
    def kind(self) -> str:
        return "SNP" if len(self.ref) == 1 and len(self.alt) == 1 else "INDEL"


@dataclass(frozen=True)
class GenotypedSite:
    contig: str
    start: int  # 0-based
    alleles: tuple[str, ...]  # ref first
    genotype: tuple[int, ...]
    passing: bool = True


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    genotype_matches: int = 0
    query_tp: int = 0
    haplotype_tp: int = 0

    @property
    def precision(self) -> float:
        return self.query_tp / (self.query_tp + self.fp) if self.query_tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "query_tp": self.query_tp,
            "haplotype_tp": self.haplotype_tp,
            "genotype_matches": self.genotype_matches,
            "precision": round(self.precision, 6),
            "recall": round(self.recall, 6),
            "f1": round(self.f1, 6),
        }


@dataclass
class Evaluation:
    snp: Counts = field(default_factory=Counts)
    indel: Counts = field(default_factory=Counts)
    false_positives: list[Allele] = field(default_factory=list)
    false_negatives: list[Allele] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "SNP": self.snp.summary(),
            "INDEL": self.indel.summary(),
            # Positions as in a VCF (1-based POS of the normalised, anchored allele).
            "false_positives": [{**asdict(a), "pos": a.pos + 1} for a in self.false_positives],
            "false_negatives": [{**asdict(a), "pos": a.pos + 1} for a in self.false_negatives],
        }


def normalize(allele: Allele, fetch: Fetch) -> Allele:
    """Trim, left-align and anchor one allele (vt normalize's algorithm)."""
    pos, ref, alt = allele.pos, allele.ref.upper(), allele.alt.upper()
    while True:
        changed = False
        if ref and alt and ref[-1] == alt[-1] and (len(ref) > 1 or len(alt) > 1):
            ref, alt = ref[:-1], alt[:-1]
            changed = True
        if (not ref or not alt) and pos > 0:
            pos -= 1
            base = fetch(allele.contig, pos, pos + 1).upper()
            ref, alt = base + ref, base + alt
            changed = True
        if not changed:
            break
    while len(ref) > 1 and len(alt) > 1 and ref[0] == alt[0]:
        pos, ref, alt = pos + 1, ref[1:], alt[1:]
    return Allele(allele.contig, pos, ref, alt)


def _alleles(site: GenotypedSite) -> list[int]:
    return sorted({g for g in site.genotype if g is not None and g > 0})


def _inside(contig: str, pos: int, intervals: dict[str, list[tuple[int, int]]] | None) -> bool:
    if intervals is None:
        return True
    return any(lo <= pos < hi for lo, hi in intervals.get(contig, []))


@dataclass
class _Side:
    """One side's counted alleles: zygosity per allele and the sites each came from."""

    zygosity: dict[Allele, tuple[int, ...]] = field(default_factory=dict)
    sites: dict[Allele, list[int]] = field(default_factory=dict)
    alleles: dict[int, list[Allele]] = field(default_factory=dict)  # site index -> its counted alleles
    records: list[GenotypedSite] = field(default_factory=list)


def _collect(
    sites: Iterable[GenotypedSite],
    passing_only: bool,
    fetch: Fetch,
    confident: dict[str, list[tuple[int, int]]] | None,
    regions: dict[str, list[tuple[int, int]]] | None,
) -> _Side:
    side = _Side()
    for site in sites:
        if passing_only and not site.passing:
            continue
        counted = []
        for index in _alleles(site):
            allele = normalize(Allele(site.contig, site.start, site.alleles[0], site.alleles[index]), fetch)
            if _inside(allele.contig, allele.pos, confident) and _inside(allele.contig, allele.pos, regions):
                side.zygosity[allele] = tuple(sorted(1 if g == index else 0 for g in site.genotype if g is not None))
                counted.append(allele)
        if counted:
            number = len(side.records)
            side.records.append(site)
            side.alleles[number] = counted
            for allele in counted:
                side.sites.setdefault(allele, []).append(number)
    return side


def evaluate(
    calls: Iterable[GenotypedSite],
    truth: Iterable[GenotypedSite],
    fetch: Fetch,
    confident: dict[str, list[tuple[int, int]]] | None = None,
    regions: dict[str, list[tuple[int, int]]] | None = None,
    cluster_distance: int = 20,
) -> Evaluation:
    """TP/FP/FN by type (see the module docstring); ``cluster_distance`` 0 turns step 2 off."""
    called = _collect(calls, True, fetch, confident, regions)
    expected = _collect(truth, False, fetch, confident, regions)
    truth_matched = {a: called.zygosity[a] == z for a, z in expected.zygosity.items() if a in called.zygosity}
    call_matched = {a for a in called.zygosity if a in expected.zygosity}
    by_haplotype: set[Allele] = set()
    if cluster_distance > 0:
        for truth_alleles, call_alleles, match in _haplotype_matches(
            expected, called, truth_matched, call_matched, fetch, cluster_distance
        ):
            for allele in truth_alleles:
                truth_matched[allele] = match == "genotype"
                by_haplotype.add(allele)
            call_matched.update(call_alleles)
    result = Evaluation()
    for allele in expected.zygosity:
        counts = result.snp if allele.kind == "SNP" else result.indel
        if allele in truth_matched:
            counts.tp += 1
            counts.genotype_matches += truth_matched[allele]
            counts.haplotype_tp += allele in by_haplotype
        else:
            counts.fn += 1
            result.false_negatives.append(allele)
    for allele in called.zygosity:
        counts = result.snp if allele.kind == "SNP" else result.indel
        if allele in call_matched:
            counts.query_tp += 1
        else:
            counts.fp += 1
            result.false_positives.append(allele)
    return result


def _haplotype_matches(
    truth: _Side,
    calls: _Side,
    truth_matched: dict[Allele, bool],
    call_matched: set[Allele],
    fetch: Fetch,
    distance: int,
) -> Iterator[tuple[list[Allele], list[Allele], Match]]:
    """Clusters of records with unmatched alleles, compared by haplotype (greedy, largest first)."""
    records = sorted(
        [(s.contig, s.start, s.start + len(s.alleles[0]), 0, i) for i, s in enumerate(truth.records)]
        + [(s.contig, s.start, s.start + len(s.alleles[0]), 1, i) for i, s in enumerate(calls.records)]
    )
    clusters: list[list[tuple[str, int, int, int, int]]] = []
    for record in records:
        last = clusters[-1] if clusters else None
        if last and last[0][0] == record[0] and record[1] <= max(r[2] for r in last) + distance:
            last.append(record)
        else:
            clusters.append([record])
    for cluster in clusters:
        open_truth = [i for _, _, _, side, i in cluster if side == 0 and _unmatched(truth.alleles[i], truth_matched)]
        open_calls = [i for _, _, _, side, i in cluster if side == 1 and _unmatched(calls.alleles[i], call_matched)]
        contig = cluster[0][0]
        while open_truth and open_calls:
            sites = [truth.records[i] for i in open_truth] + [calls.records[i] for i in open_calls]
            lo = min(s.start for s in sites)
            hi = max(s.start + len(s.alleles[0]) for s in sites)
            found = best_match(
                [_site(truth.records[i]) for i in open_truth],
                [_site(calls.records[i]) for i in open_calls],
                fetch(contig, lo, hi),
                lo,
            )
            if found is None:
                break
            t, c, match = found
            yield (
                [a for k in t for a in truth.alleles[open_truth[k]] if a not in truth_matched],
                [a for k in c for a in calls.alleles[open_calls[k]] if a not in call_matched],
                match,
            )
            open_truth = [i for k, i in enumerate(open_truth) if k not in t]
            open_calls = [i for k, i in enumerate(open_calls) if k not in c]


def _unmatched(alleles: list[Allele], matched: set[Allele] | dict[Allele, bool]) -> bool:
    return any(a not in matched for a in alleles)


def _site(site: GenotypedSite) -> Site:
    return Site(site.start, site.alleles, site.genotype)


def read_vcf_sites(path: str | Path, sample: int = 0) -> list[GenotypedSite]:
    """Sites of a VCF with the genotype of its ``sample``-th sample; PASS or '.' filters pass."""
    try:
        with pysam.VariantFile(str(path)) as vcf:
            sites = []
            for record in vcf:
                gt = record.samples[sample].get("GT") if record.samples else (0, 1)
                filters = list(record.filter.keys())
                sites.append(
                    GenotypedSite(
                        record.chrom,
                        record.start,
                        tuple(record.alleles or ()),
                        tuple(-1 if g is None else g for g in (gt or ())),
                        passing=not filters or filters == ["PASS"],
                    )
                )
            return sites
    except (OSError, ValueError) as exc:
        raise InvalidArgument.field("vcf", f"{path}: unreadable VCF: {exc}") from exc


def read_bed(path: str | Path, field: str = "bed") -> dict[str, list[tuple[int, int]]]:
    """CONTIG START END [...] lines (0-based, half-open; tabs or spaces) -> intervals per contig."""
    intervals: dict[str, list[tuple[int, int]]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument.field(field, f"{path}: unreadable BED: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            contig, start, end = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            contig, start, end = "", 0, 0
        if not contig or start < 0 or end <= start:
            raise InvalidArgument.field(
                field, f"{path}: line {number}: expected CONTIG START END with 0 <= START < END, got {line!r}"
            )
        intervals.setdefault(contig, []).append((start, end))
    return intervals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare a VCF of calls with a truth VCF (hap.py-like).")
    parser.add_argument("--calls", required=True)
    parser.add_argument("--truth", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--confident", help="BED of confident regions")
    parser.add_argument("--regions", nargs="*", default=[], help="restrict to these regions (CONTIG:START-END)")
    parser.add_argument(
        "--cluster-distance",
        type=int,
        default=20,
        help="bp between records compared together by haplotype (0: allele matching only; default 20)",
    )
    args = parser.parse_args(argv)
    try:
        result = _evaluate_files(args)
    except GenoserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    json.dump(result.summary(), sys.stdout, indent=2)
    print()
    return 0


def _evaluate_files(args: argparse.Namespace) -> Evaluation:
    from genoserve.variants.make_examples import Region

    for name in ("calls", "truth", "reference", "confident"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise InvalidArgument.field(name, f"--{name} {path}: no such file")
    regions: dict[str, list[tuple[int, int]]] | None = None
    if args.regions:
        regions = {}
        for text in args.regions:
            region = Region.parse(text)
            regions.setdefault(region.contig, []).append((region.start, region.end))
    with pysam.FastaFile(args.reference) as fasta:
        return evaluate(
            read_vcf_sites(args.calls),
            read_vcf_sites(args.truth),
            lambda c, s, e: fasta.fetch(c, s, e),
            read_bed(args.confident, "confident") if args.confident else None,
            regions,
            max(0, args.cluster_distance),
        )


if __name__ == "__main__":
    raise SystemExit(main())
