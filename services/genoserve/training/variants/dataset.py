"""Labelled pileup examples from a simulated sample, through genoserve's own candidate and pileup
code (the same path real BAMs take)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from genoserve.training.variants.simulate import SimulatedSample, TruthVariant
from genoserve.variants.candidates import Candidate, count_alleles, find_candidates
from genoserve.variants.examples import PileupExample
from genoserve.variants.make_examples import examples_for_candidate
from genoserve.variants.pileup import PileupEncoder, PileupOptions
from genoserve.variants.postprocess import simplify_alleles
from genoserve.variants.reads import unclip


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


def label(candidate: Candidate, indices: tuple[int, ...], truth: dict[int, TruthVariant]) -> int:
    """How many haplotypes carry one of the shown alts (DeepVariant's genotype-class label)."""
    variant = truth.get(candidate.start)
    if variant is None:
        return 0
    planted = tuple(simplify_alleles([variant.ref, variant.alt]))
    shown = any(
        tuple(simplify_alleles([candidate.reference_bases, candidate.alternate_bases[i]])) == planted for i in indices
    )
    return sum(variant.genotype) if shown else 0


def build(sample: SimulatedSample, channels: int = 7, margin: int = 250) -> LabelledExamples:
    """Every candidate's examples (with labels) between ``margin`` bp from the simulated edges."""
    options = PileupOptions(channels=channels)
    encoder = PileupEncoder(options)
    # As make_examples does for BAM reads: clipped ends that match the reference are re-aligned.
    reads = sorted((unclip(r, sample.reference, sample.start) for r in sample.reads), key=lambda r: r.start)
    counts = count_alleles(reads, sample.contig, sample.reference, sample.start)
    lo, hi = sample.start + margin, sample.start + len(sample.reference) - margin
    candidates = find_candidates(counts, sample.reference, sample.start, lo, hi)
    truth = {v.start: v for v in sample.truth}
    examples: list[PileupExample] = []
    labels: list[int] = []
    starts = np.array([r.start for r in reads])
    half = options.width // 2
    for candidate in candidates:
        # Reads are sorted by start and at most ~700 bp long on the reference.
        first = int(np.searchsorted(starts, candidate.start - 1000))
        last = int(np.searchsorted(starts, candidate.end + 10))
        nearby = reads[first:last]
        made = examples_for_candidate(
            candidate, nearby, _window(sample, candidate.start - half, options.width), encoder, "SIM"
        )
        for example in made:
            example.label = label(candidate, example.alt_allele_indices, truth)
            labels.append(example.label)
        examples.extend(made)
    images = (
        np.stack([e.image for e in examples])
        if examples
        else np.zeros((0, options.height, options.width, channels), np.uint8)
    )
    return LabelledExamples(images, np.asarray(labels, dtype=np.int64), examples, candidates)
