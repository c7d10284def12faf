"""Labelled pileup examples from a simulated sample, through genoserve's own make_examples path
(read filter, local realigner, candidates, pileups: the same path real BAMs take)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from genoserve.training.variants.simulate import SimulatedSample, TruthVariant
from genoserve.variants.candidates import Candidate, CandidateThresholds
from genoserve.variants.examples import PileupExample
from genoserve.variants.make_examples import PARTITION_SIZE, Region, partition_examples
from genoserve.variants.pileup import PileupOptions
from genoserve.variants.postprocess import simplify_alleles
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


def label(example: PileupExample, truth: dict[int, TruthVariant]) -> int:
    """How many haplotypes carry one of the alts ``example`` shows (DeepVariant's genotype-class label)."""
    variant = truth.get(example.start)
    if variant is None:
        return 0
    planted = tuple(simplify_alleles([variant.ref, variant.alt]))
    shown = any(
        tuple(simplify_alleles([example.reference_bases, example.alternate_bases[i]])) == planted
        for i in example.alt_allele_indices
    )
    return sum(variant.genotype) if shown else 0


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
    truth = {v.start: v for v in sample.truth}
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
            example.label = label(example, truth)
        candidates.extend(found)
        examples.extend(made)
    images = (
        np.stack([e.image for e in examples])
        if examples
        else np.zeros((0, options.height, options.width, channels), np.uint8)
    )
    labels = np.asarray([e.label for e in examples], dtype=np.int64)
    return LabelledExamples(images, labels, examples, candidates)
