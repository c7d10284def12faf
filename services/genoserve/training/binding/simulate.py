"""Simulated binding data whose labels follow binding (DragoNN's single-motif and motif-density
tasks as the base; pure numpy, no torch).

Backgrounds
    Windows of real human sequence: hg19 chr20 from DeepVariant's test reference
    (``tests/data/deepvariant``), upper-cased, either strand, windows containing N skipped.
    Training draws from chr20:9,995,000-10,895,000; held-out sets from chr20:10,895,000-11,095,000
    and 59,776,000-60,001,000 (:data:`TRAIN_REGIONS`, :data:`HELD_OUT_REGIONS`), so no background
    base is shared.

Motif instances
    Sampled base by base from real JASPAR frequency matrices (:mod:`.motifs`), mixed with the
    uniform distribution at a random weight, and kept when the instance's log-odds falls in the
    scenario's band around the TF's binding threshold (:data:`SITE_BAND`, :data:`WEAK_BAND`,
    :data:`PARTNER_BAND`); placed on a random strand without overlapping another instance
    (:class:`Site`). Decoys (column-shuffled matrices, other TFs) are sampled from the matrix as is.

Labels
    Drawn from the binding probability of :mod:`.rule`: it rises with the best site's PWM
    log-odds and cooperativity (a homotypic cluster, the preferred partner at its spacing) raises
    it. The rule reads the finished sequence, so background sites count as much as planted ones.

Single-TF training mix (``deepbind-<tf>``, 101 bp; exact proportions, :data:`BINDING_MIX`)
    ``site`` one instance; ``cluster`` 2-3 weaker instances; ``composite`` a weaker instance and its
    partner at the preferred spacing and orientation; ``misspaced`` the same pair placed otherwise;
    and composition-matched decoys: ``column_shuffled`` (an instance of the matrix with its columns
    permuted), ``dinucleotide_shuffled`` (a ``site`` sequence shuffled with its dinucleotide counts
    kept, :mod:`.shuffle`), ``genome`` (a real window with the GC fraction of a ``site`` sequence),
    ``other`` (1-3 instances of other TFs). The decoys are negatives by construction (label 0, as
    DeepBind's shuffled sequences are), whatever their best window scores: a column-shuffled
    instance with a high log-odds is still not the TF's site. Every other scenario is labelled by
    the rule.

Multitask (``multitask-tf10``, 1,000 bp)
    Per TF independently: one instance (probability 0.2), a cluster of 3 weaker instances within
    100 bp (0.1), or, for a TF with a :data:`GRAMMARS` pair, the pair or a misspaced pair (0.1
    each); plus 0-2 column-shuffled decoys. Labels by each task's rule.

Everything is a function of the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genoserve.training.binding.motifs import Motif
from genoserve.training.binding.onehot import N_CODE, complement_codes, decode, encode, one_hot
from genoserve.training.binding.rule import (
    CLUSTER_SPAN,
    GRAMMARS,
    THRESHOLDS,
    Grammar,
    label_tasks,
    partner_placement,
)
from genoserve.training.binding.shuffle import dinucleotide_shuffle

Array = np.ndarray[Any, Any]
Region = tuple[str, int, int]

REFERENCE = Path(__file__).resolve().parents[4] / "tests" / "data" / "deepvariant" / "ucsc.hg19.chr20.unittest.fasta.gz"
TRAIN_REGIONS: tuple[Region, ...] = (("chr20", 9_995_000, 10_895_000),)
HELD_OUT_REGIONS: tuple[Region, ...] = (("chr20", 10_895_000, 11_095_000), ("chr20", 59_776_000, 60_001_000))

BINDING_LENGTH = 101
MULTITASK_LENGTH = 1000
#: Fraction of each single-TF training set per scenario.
BINDING_MIX: dict[str, float] = {
    "site": 0.30,
    "cluster": 0.12,
    "composite": 0.08,
    "misspaced": 0.08,
    "column_shuffled": 0.12,
    "dinucleotide_shuffled": 0.10,
    "genome": 0.10,
    "other": 0.10,
}
#: The composition-matched decoys: unbound by construction.
DECOY_SCENARIOS = ("column_shuffled", "dinucleotide_shuffled", "genome")
#: Score bands (bits, relative to the TF's binding threshold) of planted instances: a site spans
#: the threshold; a weak site is mostly unbound alone (p <= 0.12) and bound in a cluster or pair; a partner
#: is a site of its own TF.
SITE_BAND = (-4.0, 4.0)
WEAK_BAND = (-4.0, -1.0)
PARTNER_BAND = (-2.0, 4.0)
#: Largest uniform-mixing weight of the candidates drawn for a band (0: the JASPAR matrix).
MAX_UNIFORM = 0.7
#: A misspaced pair is never within this many bp of the preferred arrangement.
MISSPACING_MARGIN = 2
#: Sequences labelled per call of the rule (bounds the memory of the window scores).
LABEL_CHUNK = 2048


class Backgrounds:
    """Windows of N-free stretches of a reference."""

    def __init__(self, segments: Sequence[Array]) -> None:
        self.segments = [s for s in segments if s.size >= MULTITASK_LENGTH]
        if not self.segments:
            raise ValueError("no N-free stretch is long enough")

    @classmethod
    def from_fasta(cls, path: Path, regions: Sequence[Region]) -> Backgrounds:
        import pysam  # a train-time dependency; the rest of this module is numpy only

        segments: list[Array] = []
        with pysam.FastaFile(str(path)) as fasta:
            for chrom, start, end in regions:
                codes = encode(fasta.fetch(chrom, start, end))
                # Split at N: boundaries of runs of non-N codes.
                is_base = np.r_[False, codes != N_CODE, False]
                edges = np.flatnonzero(np.diff(is_base.astype(np.int8)))
                segments += [codes[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True)]
        return cls(segments)

    def real(self, rng: np.random.Generator, n: int, length: int) -> Array:
        """uint8 ``[n, length]``: uniformly placed windows, each on a random strand."""
        sizes = np.array([s.size - length + 1 for s in self.segments], dtype=np.float64)
        which = rng.choice(len(self.segments), size=n, p=sizes / sizes.sum())
        out = np.empty((n, length), dtype=np.uint8)
        for i, k in enumerate(which):
            start = int(rng.integers(0, sizes[k]))
            out[i] = self.segments[k][start : start + length]
        flip = rng.random(n) < 0.5
        out[flip] = complement_codes(out[flip])
        return out

    def gc_matched(self, rng: np.random.Generator, gc: Array, length: int, candidates: int = 32) -> Array:
        """uint8 ``[len(gc), length]``: for each target GC fraction, the real window closest to it
        among ``candidates`` drawn windows."""
        gc = np.asarray(gc, dtype=np.float64)
        pool = self.real(rng, gc.size * candidates, length).reshape(gc.size, candidates, length)
        best = np.abs(gc_fraction(pool) - gc[:, None]).argmin(axis=1)
        return np.asarray(pool[np.arange(gc.size), best], dtype=np.uint8)


def gc_fraction(codes: Array) -> Array:
    """float64 ``[...]``: the fraction of C or G among the non-N bases of each row (last axis)."""
    strong = ((codes == 1) | (codes == 2)).sum(axis=-1)
    called = (codes != N_CODE).sum(axis=-1)
    return np.asarray(strong / np.maximum(called, 1), dtype=np.float64)


@dataclass(frozen=True)
class Site:
    """One planted instance: ``bases`` read on ``strand`` start at ``start`` (0-based, forward)."""

    motif: str
    start: int
    strand: int
    role: str
    bases: str

    @property
    def end(self) -> int:
        return self.start + len(self.bases)


@dataclass(frozen=True)
class SimulatedSet:
    """codes: uint8 ``[n, length]``; labels: float32 ``[n, len(tasks)]``; probability: float64
    ``[n, len(tasks)]`` (the rule's, labels drawn from it; for a benchmark set, the labels' own
    0/1); scenario: str ``[n]``; sites: the planted instances of each sequence."""

    codes: Array
    labels: Array
    probability: Array
    tasks: tuple[str, ...]
    scenario: Array
    sites: tuple[tuple[Site, ...], ...]

    def one_hot(self) -> Array:
        """float32 ``[n, length, 4]``."""
        return one_hot(self.codes)


class Crowded(Exception):
    """No free room for an instance; the caller draws the sequence again."""


class Canvas:
    """One sequence being built: its codes, which positions hold an instance, and the sites."""

    def __init__(self, codes: Array, motifs: Mapping[str, Motif], rng: np.random.Generator) -> None:
        self.codes = codes
        self.motifs = motifs
        self.rng = rng
        self.occupied = np.zeros(codes.size, dtype=bool)
        self.sites: list[Site] = []

    def free_start(self, width: int, lo: int = 0, hi: int | None = None, tries: int = 64) -> int:
        hi = self.codes.size if hi is None else hi
        for _ in range(tries):
            start = int(self.rng.integers(lo, hi - width + 1))
            if not self.occupied[start : start + width].any():
                return start
        raise Crowded

    def strand(self) -> int:
        return 1 if self.rng.random() < 0.5 else -1

    def instance(self, motif: Motif, band: tuple[float, float] | None) -> Array:
        return sample_in_band(motif, self.rng, band)

    def write(self, name: str, instance: Array, start: int, strand: int, role: str) -> Site:
        self.codes[start : start + instance.size] = instance if strand == 1 else complement_codes(instance)
        self.occupied[start : start + instance.size] = True
        site = Site(name, start, strand, role, decode(instance))
        self.sites.append(site)
        return site

    def plant(
        self, name: str, role: str, band: tuple[float, float] | None = SITE_BAND, lo: int = 0, hi: int | None = None,
        motif: Motif | None = None,
    ) -> Site:  # fmt: skip
        motif = motif or self.motifs[name]
        start = self.free_start(motif.width, lo, hi)
        return self.write(name, self.instance(motif, band), start, self.strand(), role)

    def plant_cluster(self, tf: str, count: int, band: tuple[float, float], span: int = CLUSTER_SPAN) -> None:
        lo = int(self.rng.integers(0, max(self.codes.size - span, 0) + 1))
        for _ in range(count):
            self.plant(tf, "target", band, lo, min(lo + span, self.codes.size))

    def plant_pair(self, grammar: Grammar, preferred: bool, tf_band: tuple[float, float], tries: int = 64) -> None:
        """The TF and its partner at the preferred arrangement, or (``preferred`` False) at any
        other start or strand at least :data:`MISSPACING_MARGIN` bp from it."""
        widths = {name: m.width for name, m in self.motifs.items()}
        partner_instance = self.instance(self.motifs[grammar.partner], PARTNER_BAND)
        if preferred:
            block = widths[grammar.tf] + grammar.gap + widths[grammar.partner]
            start, strand = self.free_start(block), self.strand()
            first_is_tf = (strand == 1) != grammar.partner_first
            tf_start = start if first_is_tf else start + block - widths[grammar.tf]
            p_start, p_strand = partner_placement(grammar, widths, tf_start, strand)
            self.occupied[start : start + block] = True  # the gap stays background
            self.write(grammar.tf, self.instance(self.motifs[grammar.tf], tf_band), tf_start, strand, "target")
            self.write(grammar.partner, partner_instance, p_start, p_strand, "partner")
            return
        tf_site = self.plant(grammar.tf, "target", tf_band)
        want, want_strand = partner_placement(grammar, widths, tf_site.start, tf_site.strand)
        for _ in range(tries):
            start, strand = self.free_start(widths[grammar.partner]), self.strand()
            if strand != want_strand or abs(start - want) > MISSPACING_MARGIN:
                self.write(grammar.partner, partner_instance, start, strand, "partner")
                return
        raise Crowded


def sample_in_band(motif: Motif, rng: np.random.Generator, band: tuple[float, float] | None, batch: int = 64) -> Array:
    """One instance (uint8 codes ``[width]``): ``band`` None, drawn from the matrix; else drawn
    from the matrix mixed with uniform (weight up to :data:`MAX_UNIFORM`) until its log-odds lies
    within ``band`` of the TF's threshold (:data:`.rule.THRESHOLDS`)."""
    if band is None:
        return motif.sample(rng)
    lo, hi = THRESHOLDS[motif.name] + band[0], THRESHOLDS[motif.name] + band[1]
    while True:
        candidates = motif.sample_many(rng, batch, rng.uniform(0.0, MAX_UNIFORM, batch))
        scores = motif.score(candidates)
        inside = np.flatnonzero((scores >= lo) & (scores <= hi))
        if inside.size:
            return np.asarray(candidates[inside[0]], dtype=np.uint8)


def build(
    codes: Array, motifs: Mapping[str, Motif], rng: np.random.Generator, plant: Any
) -> tuple[Array, tuple[Site, ...]]:
    """``plant(canvas)`` on a copy of ``codes``, drawn again while it runs out of room."""
    while True:
        canvas = Canvas(codes.copy(), motifs, rng)
        try:
            plant(canvas)
        except Crowded:
            continue
        return canvas.codes, tuple(canvas.sites)


def label(
    codes: Array, tasks: Sequence[str], motifs: Mapping[str, Motif], rng: np.random.Generator
) -> tuple[Array, Array]:
    """The rule's labels and probabilities ``[n, tasks]``, in chunks of :data:`LABEL_CHUNK`."""
    parts = [
        label_tasks(codes[lo : lo + LABEL_CHUNK], tasks, motifs, rng) for lo in range(0, codes.shape[0], LABEL_CHUNK)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def scenario_counts(mix: Mapping[str, float], n: int, rng: np.random.Generator) -> Array:
    """str ``[n]``: the scenarios in the exact proportions of ``mix`` (rounding to the first), shuffled."""
    counts = np.floor(np.array(list(mix.values())) * n).astype(int)
    counts[0] += n - counts.sum()
    return rng.permutation(np.repeat(np.array(list(mix)), counts))


def simulate_binding(
    motifs: Mapping[str, Motif],
    tf: str,
    n: int,
    rng: np.random.Generator,
    backgrounds: Backgrounds,
    length: int = BINDING_LENGTH,
) -> SimulatedSet:
    """The single-TF training mix for ``tf`` (one of :data:`GRAMMARS`): ``n`` sequences of
    ``length``, labels ``[n, 1]`` by the rule."""
    grammar = GRAMMARS[tf]
    others = [name for name in motifs if name not in (tf, grammar.partner)]
    scenarios = scenario_counts(BINDING_MIX, n, rng)
    codes = backgrounds.real(rng, n, length)
    all_sites: list[tuple[Site, ...]] = []

    def one_site(canvas: Canvas) -> None:
        canvas.plant(tf, "target")

    for i, scenario in enumerate(scenarios):
        sites: tuple[Site, ...] = ()
        if scenario == "site":
            codes[i], sites = build(codes[i], motifs, rng, one_site)
        elif scenario == "cluster":
            count = int(rng.integers(2, 4))
            codes[i], sites = build(codes[i], motifs, rng, lambda c, k=count: c.plant_cluster(tf, k, WEAK_BAND))
        elif scenario in ("composite", "misspaced"):
            preferred = scenario == "composite"
            codes[i], sites = build(codes[i], motifs, rng, lambda c, p=preferred: c.plant_pair(grammar, p, WEAK_BAND))
        elif scenario == "column_shuffled":
            decoy = motifs[tf].column_shuffled(rng)
            codes[i], sites = build(codes[i], motifs, rng, lambda c, m=decoy: c.plant(m.name, "decoy", None, motif=m))
        elif scenario == "dinucleotide_shuffled":
            planted, _ = build(codes[i], motifs, rng, one_site)
            codes[i] = dinucleotide_shuffle(planted, rng)
        elif scenario == "genome":
            planted, _ = build(codes[i], motifs, rng, one_site)
            codes[i] = backgrounds.gc_matched(rng, gc_fraction(planted)[None], length)[0]
        elif scenario == "other":
            count = int(rng.integers(1, 4))
            picks = [others[int(k)] for k in rng.integers(len(others), size=count)]
            codes[i], sites = build(codes[i], motifs, rng, lambda c, p=picks: [c.plant(m, "decoy", None) for m in p])
        all_sites.append(sites)
    labels, probability = label(codes, (tf,), motifs, rng)
    is_decoy = np.isin(scenarios, DECOY_SCENARIOS)
    labels[is_decoy], probability[is_decoy] = 0.0, 0.0
    return SimulatedSet(codes, labels, probability, (tf,), scenarios, tuple(all_sites))


def simulate_multitask(
    motifs: Mapping[str, Motif],
    tasks: Sequence[str],
    n: int,
    rng: np.random.Generator,
    backgrounds: Backgrounds,
    length: int = MULTITASK_LENGTH,
    p_site: float = 0.2,
    p_cluster: float = 0.1,
    p_pair: float = 0.1,
) -> SimulatedSet:
    """``n`` sequences with an independent configuration per task; labels ``[n, len(tasks)]`` by
    each task's rule."""
    codes = backgrounds.real(rng, n, length)
    all_sites: list[tuple[Site, ...]] = []
    for i in range(n):
        states = rng.random(len(tasks))
        preferred = rng.random(len(tasks)) < 0.5
        decoys = [
            motifs[tasks[int(k)]].column_shuffled(rng) for k in rng.integers(len(tasks), size=int(rng.integers(0, 3)))
        ]

        def plant(
            canvas: Canvas, states: Array = states, preferred: Array = preferred, decoys: list[Motif] = decoys
        ) -> None:
            # Clusters and pairs first: they need the most room.
            for t in np.argsort(-states, kind="stable"):
                tf, grammar, r = tasks[t], GRAMMARS.get(tasks[t]), states[t]
                if r < p_site:
                    canvas.plant(tf, "target")
                elif r < p_site + p_cluster:
                    canvas.plant_cluster(tf, 3, WEAK_BAND)
                elif grammar is not None and r < p_site + p_cluster + 2 * p_pair:
                    canvas.plant_pair(grammar, bool(preferred[t]), WEAK_BAND)
            for decoy in decoys:
                canvas.plant(decoy.name, "decoy", None, motif=decoy)

        codes[i], sites = build(codes[i], motifs, rng, plant)
        all_sites.append(sites)
    labels, probability = label(codes, tasks, motifs, rng)
    return SimulatedSet(codes, labels, probability, tuple(tasks), np.full(n, "multitask"), tuple(all_sites))
