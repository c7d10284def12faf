"""hap.py-like comparison of calls with a truth set: allele-level matching after normalisation.

Each non-reference allele in a genotype (GT containing it) of a PASS call, and of a truth record,
becomes one (contig, pos, ref, alt) allele, normalised as vt/bcftools do: common suffix trimmed,
indels left-aligned through repeats against the reference, common prefix trimmed to one anchor
base. Alleles are counted inside the confident regions (by start) and restricted to ``regions``.
TP = in both, FP = called only, FN = truth only; SNP when ref and alt are one base each, INDEL
otherwise. ``genotype_matches`` counts TP alleles whose call has the truth's genotype.

    python -m genoserve.variants.evaluate --calls calls.vcf.gz --truth truth.vcf.gz \
        --confident truth.bed --reference ref.fa.gz --regions chr20:10000000-10010000
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pysam

from genoserve.core.errors import GenoserveError, InvalidArgument

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

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

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


def evaluate(
    calls: Iterable[GenotypedSite],
    truth: Iterable[GenotypedSite],
    fetch: Fetch,
    confident: dict[str, list[tuple[int, int]]] | None = None,
    regions: dict[str, list[tuple[int, int]]] | None = None,
) -> Evaluation:
    """Allele-level TP/FP/FN by type (see the module docstring)."""

    def collect(sites: Iterable[GenotypedSite], passing_only: bool) -> dict[Allele, tuple[int, ...]]:
        out: dict[Allele, tuple[int, ...]] = {}
        for site in sites:
            if passing_only and not site.passing:
                continue
            for index in _alleles(site):
                allele = normalize(Allele(site.contig, site.start, site.alleles[0], site.alleles[index]), fetch)
                if _inside(allele.contig, allele.pos, confident) and _inside(allele.contig, allele.pos, regions):
                    zygosity = tuple(sorted(1 if g == index else 0 for g in site.genotype if g is not None))
                    out[allele] = zygosity
        return out

    called = collect(calls, passing_only=True)
    expected = collect(truth, passing_only=False)
    result = Evaluation()
    for allele, genotype in expected.items():
        counts = result.snp if allele.kind == "SNP" else result.indel
        if allele in called:
            counts.tp += 1
            counts.genotype_matches += called[allele] == genotype
        else:
            counts.fn += 1
            result.false_negatives.append(allele)
    for allele in called:
        if allele not in expected:
            (result.snp if allele.kind == "SNP" else result.indel).fp += 1
            result.false_positives.append(allele)
    return result


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
        )


if __name__ == "__main__":
    raise SystemExit(main())
