"""Simulated binding data with a motif grammar (the DragoNN approach; pure numpy, no torch).

Backgrounds
    Half the sequences are windows of real human sequence: hg19 chr20 from DeepVariant's test
    reference (``tests/data/deepvariant``), upper-cased, either strand, windows containing N
    skipped. Training draws from chr20:9,995,000-10,895,000; held-out test sets from
    chr20:10,895,000-11,095,000 and 59,776,000-60,001,000 (:data:`TRAIN_REGIONS`,
    :data:`HELD_OUT_REGIONS`), so no background base is shared. The other half is GC-matched
    random sequence: i.i.d. bases whose GC fraction is that of a real window drawn from the same
    regions.

Motif instances
    Sampled base by base from real JASPAR frequency matrices (:mod:`.motifs`), placed on a random
    strand without overlapping any other instance. Each placement is recorded as a :class:`Site`.

When is a TF "bound" (label 1)? Either of
    - homotypic cluster: at least :data:`CLUSTER_SIZE` (3) instances of the TF's motif within
      :data:`CLUSTER_SPAN` (100) bp (for 101 bp sequences: anywhere);
    - heterotypic pair: the TF's motif and its partner's at the preferred spacing and relative
      orientation of its :class:`Grammar` (CTCF+YY1, GATA1+TAL1::TCF3, SPI1+CEBPA). GATA1's is the
      erythroid GATA...(8 bp)...CAG E-box composite of JASPAR MA0140 (GATA1::TAL1); the other two
      are synthetic.
    Labels are computed from the placed sites by :func:`is_bound`, never assumed.

Single-TF task (``deepbind-<tf>``, 101 bp), exact proportions per set (:data:`BINDING_MIX`)
    positives: ``cluster`` (3 instances), ``composite`` (the preferred pair);
    negatives: ``background`` (nothing planted), ``decoys`` (1-3 instances of other TFs' motifs),
    ``lone`` (1 or 2 instances of the TF: strong sites, but no cluster), ``misspaced`` (the TF and
    its partner at a wrong spacing or orientation). Every sequence also gets 1-2 extra decoys with
    probability 1/2. Positives and ``lone``/``misspaced`` negatives hold equally good instances, so
    a PWM max-scan cannot separate them; a model must count instances and read spacing.

Multitask (``multitask-tf10``, 1000 bp, 10 labels)
    For each TF independently: bound with probability 1/4 (a cluster within 100 bp, or for a TF
    with a grammar, the composite half the time), else a "lone" configuration with probability 1/4
    (1-2 instances anywhere, or for a TF with a grammar a misspaced pair half the time). The other
    TFs' instances act as decoys for each task. Labels by :func:`is_bound` for every task.

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

Array = np.ndarray[Any, Any]
Region = tuple[str, int, int]

REFERENCE = Path(__file__).resolve().parents[4] / "tests" / "data" / "deepvariant" / "ucsc.hg19.chr20.unittest.fasta.gz"
TRAIN_REGIONS: tuple[Region, ...] = (("chr20", 9_995_000, 10_895_000),)
HELD_OUT_REGIONS: tuple[Region, ...] = (("chr20", 10_895_000, 11_095_000), ("chr20", 59_776_000, 60_001_000))

BINDING_LENGTH = 101
MULTITASK_LENGTH = 1000
CLUSTER_SIZE = 3
CLUSTER_SPAN = 100
#: A misspaced pair is never within this many bp of the preferred arrangement.
MISSPACING_MARGIN = 2
#: Fraction of each single-TF set per scenario (positives first).
BINDING_MIX: dict[str, float] = {
    "cluster": 0.25,
    "composite": 0.25,
    "background": 0.10,
    "decoys": 0.10,
    "lone": 0.15,
    "misspaced": 0.15,
}
POSITIVE_SCENARIOS = frozenset({"cluster", "composite"})


@dataclass(frozen=True)
class Grammar:
    """The preferred pair: the partner ``gap`` bp after (or before) the TF, on the same (+1) or
    opposite (-1) strand, in the TF's frame; the whole pair may lie on either strand."""

    tf: str
    partner: str
    gap: int
    partner_first: bool
    partner_strand: int


GRAMMARS: dict[str, Grammar] = {
    "CTCF": Grammar("CTCF", "YY1", gap=1, partner_first=False, partner_strand=1),
    "GATA1": Grammar("GATA1", "TAL1::TCF3", gap=4, partner_first=False, partner_strand=-1),
    "SPI1": Grammar("SPI1", "CEBPA", gap=1, partner_first=False, partner_strand=1),
}


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
    """codes: uint8 ``[n, length]``; labels: float32 ``[n, len(tasks)]``; scenario: str ``[n]``
    (single-TF sets; ``"multitask"`` otherwise); real: bool ``[n]`` (real or random background);
    sites: the planted instances of each sequence."""

    codes: Array
    labels: Array
    tasks: tuple[str, ...]
    scenario: Array
    real: Array
    sites: tuple[tuple[Site, ...], ...]

    def one_hot(self) -> Array:
        """float32 ``[n, length, 4]``."""
        return one_hot(self.codes)


class Backgrounds:
    """Real windows from N-free stretches of a reference, and GC-matched random sequence."""

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

    def gc_matched(self, rng: np.random.Generator, n: int, length: int) -> Array:
        """uint8 ``[n, length]``: i.i.d. bases, each sequence at the GC fraction of a real window."""
        gc = gc_fraction(self.real(rng, n, length))
        strong = rng.random((n, length)) < gc[:, None]
        second = rng.random((n, length)) < 0.5
        # A=0, C=1, G=2, T=3: weak bases A/T, strong bases C/G.
        return np.where(strong, np.where(second, 2, 1), np.where(second, 3, 0)).astype(np.uint8)

    def sample(self, rng: np.random.Generator, n: int, length: int) -> tuple[Array, Array]:
        """Half real, half GC-matched random, shuffled: (codes uint8 ``[n, length]``, real bool ``[n]``)."""
        real = rng.permutation(np.arange(n) < (n + 1) // 2)
        codes = np.empty((n, length), dtype=np.uint8)
        codes[real] = self.real(rng, int(real.sum()), length)
        codes[~real] = self.gc_matched(rng, int((~real).sum()), length)
        return codes, real


def gc_fraction(codes: Array) -> Array:
    """float64 ``[n]``: the fraction of C or G among the non-N bases of each row."""
    strong = ((codes == 1) | (codes == 2)).sum(axis=-1)
    called = (codes != N_CODE).sum(axis=-1)
    return np.asarray(strong / np.maximum(called, 1), dtype=np.float64)


# --- the grammar -------------------------------------------------------------------------------


def partner_placement(grammar: Grammar, widths: Mapping[str, int], tf_start: int, tf_strand: int) -> tuple[int, int]:
    """(start, strand) of the partner that forms the preferred pair with a TF site."""
    w_tf, w_partner = widths[grammar.tf], widths[grammar.partner]
    after = (tf_strand == 1) != grammar.partner_first
    start = tf_start + w_tf + grammar.gap if after else tf_start - grammar.gap - w_partner
    return start, grammar.partner_strand * tf_strand


def has_cluster(sites: Sequence[Site], tf: str, size: int = CLUSTER_SIZE, span: int = CLUSTER_SPAN) -> bool:
    """At least ``size`` instances of ``tf`` lie within ``span`` bp."""
    ordered = sorted((s for s in sites if s.motif == tf), key=lambda s: s.start)
    return any(ordered[i + size - 1].end - ordered[i].start <= span for i in range(len(ordered) - size + 1))


def has_composite(sites: Sequence[Site], grammar: Grammar, widths: Mapping[str, int], margin: int = 0) -> bool:
    """Some TF site has a partner site within ``margin`` bp of the preferred arrangement."""
    partners = [s for s in sites if s.motif == grammar.partner]
    for tf_site in (s for s in sites if s.motif == grammar.tf):
        start, strand = partner_placement(grammar, widths, tf_site.start, tf_site.strand)
        if any(p.strand == strand and abs(p.start - start) <= margin for p in partners):
            return True
    return False


def is_bound(sites: Sequence[Site], tf: str, widths: Mapping[str, int]) -> bool:
    """The label rule: a homotypic cluster, or the TF's preferred heterotypic pair."""
    grammar = GRAMMARS.get(tf)
    return has_cluster(sites, tf) or (grammar is not None and has_composite(sites, grammar, widths))


# --- planting ----------------------------------------------------------------------------------


class _Crowded(Exception):
    """No free room for an instance; the caller draws the sequence again."""


class _Canvas:
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
        raise _Crowded

    def write(self, motif: str, start: int, strand: int, role: str) -> Site:
        instance = self.motifs[motif].sample(self.rng)
        self.codes[start : start + instance.size] = instance if strand == 1 else complement_codes(instance)
        self.occupied[start : start + instance.size] = True
        site = Site(motif, start, strand, role, decode(instance))
        self.sites.append(site)
        return site

    def strand(self) -> int:
        return 1 if self.rng.random() < 0.5 else -1

    def plant(self, motif: str, role: str, lo: int = 0, hi: int | None = None) -> Site:
        width = self.motifs[motif].width
        return self.write(motif, self.free_start(width, lo, hi), self.strand(), role)

    def plant_cluster(self, tf: str, count: int = CLUSTER_SIZE, span: int = CLUSTER_SPAN) -> None:
        lo = int(self.rng.integers(0, max(self.codes.size - span, 0) + 1))
        for _ in range(count):
            self.plant(tf, "target", lo, min(lo + span, self.codes.size))

    def plant_composite(self, grammar: Grammar) -> None:
        widths = {name: m.width for name, m in self.motifs.items()}
        block = widths[grammar.tf] + grammar.gap + widths[grammar.partner]
        start = self.free_start(block)
        strand = self.strand()
        first_is_tf = (strand == 1) != grammar.partner_first
        tf_start = start if first_is_tf else start + block - widths[grammar.tf]
        partner_start, partner_strand = partner_placement(grammar, widths, tf_start, strand)
        self.occupied[start : start + block] = True  # the gap stays background, and stays free of motifs
        self.write(grammar.tf, tf_start, strand, "target")
        self.write(grammar.partner, partner_start, partner_strand, "partner")

    def plant_misspaced(self, grammar: Grammar, tries: int = 64) -> None:
        widths = {name: m.width for name, m in self.motifs.items()}
        tf_site = self.plant(grammar.tf, "target")
        width = widths[grammar.partner]
        preferred, preferred_strand = partner_placement(grammar, widths, tf_site.start, tf_site.strand)
        for _ in range(tries):
            start, strand = self.free_start(width), self.strand()
            if strand != preferred_strand or abs(start - preferred) > MISSPACING_MARGIN:
                self.write(grammar.partner, start, strand, "partner")
                return
        raise _Crowded

    def plant_decoys(self, pool: Sequence[str], count: int) -> None:
        for _ in range(count):
            self.plant(pool[int(self.rng.integers(len(pool)))], "decoy")


def simulate_binding(
    motifs: Mapping[str, Motif],
    tf: str,
    n: int,
    rng: np.random.Generator,
    backgrounds: Backgrounds,
    length: int = BINDING_LENGTH,
) -> SimulatedSet:
    """The single-TF grammar task for ``tf`` (one of :data:`GRAMMARS`): ``n`` sequences, label
    ``[n, 1]``, scenarios in the exact proportions of :data:`BINDING_MIX`."""
    grammar = GRAMMARS[tf]
    widths = {name: m.width for name, m in motifs.items()}
    decoy_pool = [name for name in motifs if name != tf]
    counts = np.floor(np.array(list(BINDING_MIX.values())) * n).astype(int)
    counts[0] += n - counts.sum()
    scenarios = rng.permutation(np.repeat(np.array(list(BINDING_MIX)), counts))
    codes, real = backgrounds.sample(rng, n, length)
    all_sites: list[tuple[Site, ...]] = []
    for i, scenario in enumerate(scenarios):
        background = codes[i].copy()
        while True:
            canvas = _Canvas(background.copy(), motifs, rng)
            try:
                if scenario == "cluster":
                    canvas.plant_cluster(tf, span=length)
                elif scenario == "composite":
                    canvas.plant_composite(grammar)
                elif scenario == "decoys":
                    canvas.plant_decoys(decoy_pool, int(rng.integers(1, 4)))
                elif scenario == "lone":
                    for _ in range(int(rng.integers(1, CLUSTER_SIZE))):
                        canvas.plant(tf, "target")
                elif scenario == "misspaced":
                    canvas.plant_misspaced(grammar)
                if rng.random() < 0.5:
                    canvas.plant_decoys(decoy_pool, int(rng.integers(1, 3)))
            except _Crowded:
                continue
            # A decoy partner can complete a pair by chance; the label must match the scenario.
            if is_bound(canvas.sites, tf, widths) == (scenario in POSITIVE_SCENARIOS):
                break
        codes[i] = canvas.codes
        all_sites.append(tuple(canvas.sites))
    labels = np.isin(scenarios, list(POSITIVE_SCENARIOS)).astype(np.float32)[:, None]
    return SimulatedSet(codes, labels, (tf,), scenarios, real, tuple(all_sites))


def simulate_multitask(
    motifs: Mapping[str, Motif],
    tasks: Sequence[str],
    n: int,
    rng: np.random.Generator,
    backgrounds: Backgrounds,
    length: int = MULTITASK_LENGTH,
    p_bound: float = 0.25,
    p_lone: float = 0.25,
) -> SimulatedSet:
    """``n`` sequences with independent bound / lone / absent states per task; labels
    float32 ``[n, len(tasks)]`` by :func:`is_bound`."""
    widths = {name: m.width for name, m in motifs.items()}
    codes, real = backgrounds.sample(rng, n, length)
    labels = np.zeros((n, len(tasks)), dtype=np.float32)
    all_sites: list[tuple[Site, ...]] = []
    for i in range(n):
        while True:
            canvas = _Canvas(codes[i].copy(), motifs, rng)
            states = rng.random(len(tasks))
            use_grammar = rng.random(len(tasks)) < 0.5
            try:
                # Bound configurations first: they need the most room.
                for t in np.argsort(states, kind="stable"):
                    tf, grammar = tasks[t], GRAMMARS.get(tasks[t])
                    if states[t] < p_bound:
                        if grammar is not None and use_grammar[t]:
                            canvas.plant_composite(grammar)
                        else:
                            canvas.plant_cluster(tf)
                    elif states[t] < p_bound + p_lone:
                        if grammar is not None and use_grammar[t]:
                            canvas.plant_misspaced(grammar)
                        else:
                            for _ in range(int(rng.integers(1, CLUSTER_SIZE))):
                                canvas.plant(tf, "target")
            except _Crowded:
                continue
            break
        codes[i] = canvas.codes
        labels[i] = [is_bound(canvas.sites, tf, widths) for tf in tasks]
        all_sites.append(tuple(canvas.sites))
    scenario = np.full(n, "multitask")
    return SimulatedSet(codes, labels, tuple(tasks), scenario, real, tuple(all_sites))
