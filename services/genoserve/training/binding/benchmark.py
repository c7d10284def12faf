"""Held-out evaluation sets with labels by construction, not by the binding rule (pure numpy).

Single-site detection (:func:`single_site_set`)
    Positives: one instance drawn from the JASPAR matrix as published (no uniform mixing, no score
    band), anywhere on either strand of a real chr20 window. Negatives, with the composition of
    positives, a third each: ``column_shuffled`` (an instance of the matrix with its columns
    permuted, so the same bases and information content, in a real window), ``dinucleotide_shuffled``
    (a positive shuffled with its dinucleotide counts kept) and ``genome`` (a real window with the
    GC fraction of a positive). The question: is a real site of this TF here? A PWM scan is the
    textbook answer, so this is the set on which a learned model must at least match it.

Grammar (:func:`grammar_set`), sites from :data:`.simulate.WEAK_BAND` (each weak alone)
    ``cluster_vs_lone``: 3 sites within :data:`.rule.CLUSTER_SPAN` bp (label 1) against one site
    (label 0). ``composite_vs_misspaced``: the site and its partner at the preferred spacing and
    orientation (1) against the same two anywhere else (0). A PWM scan sees the best site only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from genoserve.training.binding.motifs import Motif
from genoserve.training.binding.onehot import decode
from genoserve.training.binding.rule import GRAMMARS
from genoserve.training.binding.shuffle import dinucleotide_shuffle
from genoserve.training.binding.simulate import (
    WEAK_BAND,
    Backgrounds,
    Canvas,
    SimulatedSet,
    Site,
    build,
    gc_fraction,
)

DECOYS = ("column_shuffled", "dinucleotide_shuffled", "genome")
GRAMMAR_TASKS = ("cluster_vs_lone", "composite_vs_misspaced")


def single_site_set(
    motifs: Mapping[str, Motif], tf: str, n: int, rng: np.random.Generator, backgrounds: Backgrounds, length: int
) -> SimulatedSet:
    """``n`` positives then ``n`` negatives (label float32 ``[2n, 1]``); scenario ``site`` or the decoy."""
    motif = motifs[tf]
    positives = backgrounds.real(rng, n, length)
    sites: list[tuple[Site, ...]] = []
    for i in range(n):
        positives[i], planted = build(positives[i], motifs, rng, lambda c: c.plant(tf, "target", None))
        sites.append(planted)
    kinds = np.array(DECOYS)[np.arange(n) % len(DECOYS)]
    negatives = backgrounds.real(rng, n, length)
    for i, kind in enumerate(kinds):
        if kind == "column_shuffled":
            decoy = motif.column_shuffled(rng)
            negatives[i], planted = build(
                negatives[i], motifs, rng, lambda c, m=decoy: c.plant(m.name, "decoy", None, motif=m)
            )
            sites.append(planted)
            continue
        if kind == "dinucleotide_shuffled":
            negatives[i] = dinucleotide_shuffle(positives[i], rng)
        else:
            negatives[i] = backgrounds.gc_matched(rng, gc_fraction(positives[i])[None], length)[0]
        sites.append(())
    labels = np.r_[np.ones(n), np.zeros(n)].astype(np.float32)[:, None]
    scenario = np.r_[np.full(n, "site"), kinds]
    codes = np.vstack([positives, negatives])
    return SimulatedSet(codes, labels, labels.astype(np.float64), (tf,), scenario, tuple(sites))


def grammar_set(
    motifs: Mapping[str, Motif],
    tf: str,
    task: str,
    n: int,
    rng: np.random.Generator,
    backgrounds: Backgrounds,
    length: int,
) -> SimulatedSet:
    """``n`` sequences, half positive (cluster or composite) then half negative (lone or misspaced)."""
    half = n // 2
    codes = backgrounds.real(rng, 2 * half, length)
    sites: list[tuple[Site, ...]] = []

    def plant(canvas: Canvas, positive: bool) -> None:
        if task == "cluster_vs_lone":
            canvas.plant_cluster(tf, 3 if positive else 1, WEAK_BAND)
        elif task == "composite_vs_misspaced":
            canvas.plant_pair(GRAMMARS[tf], positive, WEAK_BAND)
        else:
            raise ValueError(f"unknown grammar task {task!r}")

    for i in range(2 * half):
        codes[i], planted = build(codes[i], motifs, rng, lambda c, p=i < half: plant(c, p))
        sites.append(planted)
    labels = (np.arange(2 * half) < half).astype(np.float32)[:, None]
    scenario = np.where(labels[:, 0] == 1, task.split("_vs_")[0], task.split("_vs_")[1])
    return SimulatedSet(codes, labels, labels.astype(np.float64), (tf,), scenario, tuple(sites))


def aligned_sites(
    motifs: Mapping[str, Motif], tf: str, n: int, rng: np.random.Generator, backgrounds: Backgrounds, length: int
) -> list[str]:
    """``n`` held-out windows, each with one JASPAR-sampled ``tf`` site on the forward strand at the
    same place (centred): the input of an averaged mutagenesis map and its logo."""
    start = (length - motifs[tf].width) // 2
    codes = backgrounds.real(rng, n, length)
    for row in codes:
        row[start : start + motifs[tf].width] = motifs[tf].sample(rng)
    return [decode(row) for row in codes]


def main(argv: list[str] | None = None) -> None:
    """Write a FASTA of :func:`aligned_sites` (for ``genoserve predict binding --mutagenesis --logo``)."""
    import argparse
    from pathlib import Path

    from genoserve.training.binding.motifs import load_motifs
    from genoserve.training.binding.simulate import BINDING_LENGTH, HELD_OUT_REGIONS, REFERENCE

    parser = argparse.ArgumentParser(description="Aligned held-out sites of one TF, as FASTA.")
    parser.add_argument("--tf", required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--length", type=int, default=BINDING_LENGTH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    backgrounds = Backgrounds.from_fasta(REFERENCE, HELD_OUT_REGIONS)
    sites = aligned_sites(load_motifs(), args.tf, args.n, np.random.default_rng(args.seed), backgrounds, args.length)
    args.out.write_text("".join(f">{args.tf}_{i}\n{bases}\n" for i, bases in enumerate(sites)))


if __name__ == "__main__":
    main()
