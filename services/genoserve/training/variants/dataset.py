"""Labelled pileup examples from a simulated sample, through genoserve's own make_examples path
(read filter, local realigner, candidates, pileups: the same path real BAMs take)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from genoserve.training.variants.simulate import SimulatedSample
from genoserve.variants.candidates import Candidate, CandidateThresholds
from genoserve.variants.evaluate import Allele, normalize
from genoserve.variants.examples import PileupExample
from genoserve.variants.make_examples import PARTITION_SIZE, Region, partition_examples
from genoserve.variants.pileup import PileupOptions
from genoserve.variants.reads import ReadFilter
from genoserve.variants.realign import REFERENCE_PAD, RealignerOptions


@dataclass
class LabelledExamples:
    images: npt.NDArray[np.uint8]  # (n, 100, 221, channels)
    labels: npt.NDArray[np.int64]  # (n,) 0 hom-ref, 1 het, 2 hom-alt for the alts shown
    examples: list[PileupExample]
    candidates: list[Candidate]


def _window(sample: SimulatedSample, start: int, width: int) -> str:
    lo = start - sample.start
    bases = sample.reference[max(0, lo) : max(0, lo + width)]
    return "N" * max(0, -lo) + bases + "N" * (width - max(0, -lo) - len(bases))


#: Planted alleles, normalised (trimmed, left-aligned, anchored) -> how many haplotypes carry them.
TruthIndex = dict[Allele, int]


def truth_index(sample: SimulatedSample) -> TruthIndex:
    """The planted variants normalised against the sample's reference: the simulator plants an
    indel anywhere in a repeat, while candidates come left-aligned (the realigner places gaps as
    DeepVariant's does), so labels compare normalised alleles, not start positions."""
    fetch = _fetcher(sample)
    return {normalize(Allele(sample.contig, v.start, v.ref, v.alt), fetch): sum(v.genotype) for v in sample.truth}


def _fetcher(sample: SimulatedSample) -> Callable[[str, int, int], str]:
    def fetch(contig: str, lo: int, hi: int) -> str:
        return _window(sample, lo, hi - lo)

    return fetch


def label(example: PileupExample, truth: TruthIndex, fetch: Callable[[str, int, int], str]) -> int:
    """How many haplotypes carry one of the alts ``example`` shows (DeepVariant's genotype-class label)."""
    alleles = [
        Allele(example.reference_name, example.start, example.reference_bases, example.alternate_bases[i])
        for i in example.alt_allele_indices
    ]
    carried = [truth.get(normalize(allele, fetch), 0) for allele in alleles]
    return max(carried, default=0)


def build(sample: SimulatedSample, channels: int = 7, margin: int = 250) -> LabelledExamples:
    """Every candidate's examples (with labels) between ``margin`` bp from the simulated edges.

    The reads go through make_examples' own per-partition path, as a BAM's would: DeepVariant's
    read filter (mapping quality), 1000 bp partitions, the local realigner, candidate finding and
    pileup drawing (``genoserve.variants.make_examples.partition_examples``).
    """
    options = PileupOptions(channels=channels)
    requirements = ReadFilter()
    reads = [r for r in sample.reads if r.mapping_quality >= requirements.min_mapping_quality]
    reads.sort(key=lambda r: r.start)
    starts = np.array([r.start for r in reads])
    ends = np.maximum.accumulate(np.array([r.end for r in reads])) if reads else starts
    end_of_sample = sample.start + len(sample.reference)
    lo, hi = sample.start + margin, end_of_sample - margin
    truth = truth_index(sample)
    fetch = _fetcher(sample)
    examples: list[PileupExample] = []
    candidates: list[Candidate] = []
    for start in range(lo, hi, PARTITION_SIZE):
        end = min(start + PARTITION_SIZE, hi)
        # Reads overlapping [start, end), as a BAM query returns them (sorted by start).
        first = int(np.searchsorted(ends, start, side="right"))
        last = int(np.searchsorted(starts, end))
        nearby = [r for r in reads[first:last] if r.end > start]
        ref_start = max(sample.start, start - REFERENCE_PAD)
        ref = _window(sample, ref_start, min(end_of_sample, end + REFERENCE_PAD) - ref_start)
        found, made = partition_examples(
            Region(sample.contig, start, end),
            nearby,
            ref,
            ref_start,
            end_of_sample,
            options,
            CandidateThresholds(),
            RealignerOptions(),
            "SIM",
        )
        for example in made:
            example.label = label(example, truth, fetch)
        candidates.extend(found)
        examples.extend(made)
    images = (
        np.stack([e.image for e in examples])
        if examples
        else np.zeros((0, options.height, options.width, channels), np.uint8)
    )
    labels = np.asarray([e.label for e in examples], dtype=np.int64)
    return LabelledExamples(images, labels, examples, candidates)
