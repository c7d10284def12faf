"""When a simulated sequence is bound: a probability that follows its best site (pure numpy).

The rule is a function of the sequence alone (it scans the bases; it never reads what was
planted), so a model can learn it and a label never contradicts the sequence.

Sites
    Every window scored with the TF's JASPAR log-odds matrix (:meth:`.Motif.log_odds`, bits) on
    both strands. A *site* is a window scoring at least ``site_min`` (``threshold`` - 3 bits);
    overlapping sites keep the stronger one.

Binding energy ``E`` (bits)
    The best window's score, raised by cooperativity at a site: ``cluster_bonus`` (2 bits) for each
    other site of the same TF within :data:`CLUSTER_SPAN` bp (at most two count: a homotypic
    cluster of three sites gains 4 bits), and ``composite_bonus`` (4 bits) when the TF's preferred
    partner (:class:`Grammar`) has a site at the preferred spacing and orientation. ``E`` is the
    largest over the sites (or the best window when there is none).

Probability bound
    ``p = 1 / (1 + 2 ** ((threshold - E) / temperature))``: one half at ``threshold``, rising with
    the log-odds as the occupancy of a site whose affinity is ``2 ** (score / temperature)``
    (``temperature`` 0.35 bits: p goes from 0.1 to 0.9 over 2.2 bits). The label is drawn from it
    (Bernoulli), so sites near the threshold are sometimes unbound and sometimes bound.

Thresholds (:data:`THRESHOLDS`) are per TF: the larger of the mean JASPAR-sampled instance score
minus half its standard deviation, and the 90th percentile of the best score in 1,000 bp windows
of the training chr20 regions (500 windows, seed 0); at most the matrix's best score minus 1.5 bits (MAX's 6 bp matrix
would otherwise never be bound). A JASPAR-sampled site alone is bound about 55-75% of the time, a
1,000 bp window without a planted site at most about 10%. :func:`suggest_threshold` re-derives
them; a test checks the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genoserve.training.binding.motifs import Motif

Array = np.ndarray[Any, Any]

CLUSTER_SPAN = 100
TEMPERATURE = 0.35
SITE_MARGIN = 3.0
CLUSTER_BONUS = 2.0
MAX_CLUSTER_PARTNERS = 2
COMPOSITE_BONUS = 4.0
THRESHOLDS: dict[str, float] = {
    "CTCF": 14.2,
    "GATA1": 12.7,
    "SPI1": 13.5,
    "CEBPA": 11.8,
    "FOXA1": 11.9,
    "HNF4A": 12.0,
    "REST": 20.4,
    "MAX": 10.0,
    "YY1": 12.7,
    "NRF1": 12.5,
    "TAL1::TCF3": 12.4,
}


@dataclass(frozen=True)
class Grammar:
    """The preferred pair: the partner ``gap`` bp after (or before) the TF, on the same (+1) or
    opposite (-1) strand, in the TF's frame; the whole pair may lie on either strand."""

    tf: str
    partner: str
    gap: int
    partner_first: bool
    partner_strand: int


#: GATA1's is the erythroid GATA...(8 bp)...CAG E-box composite of JASPAR MA0140 (GATA1::TAL1);
#: the other two are synthetic.
GRAMMARS: dict[str, Grammar] = {
    "CTCF": Grammar("CTCF", "YY1", gap=1, partner_first=False, partner_strand=1),
    "GATA1": Grammar("GATA1", "TAL1::TCF3", gap=4, partner_first=False, partner_strand=-1),
    "SPI1": Grammar("SPI1", "CEBPA", gap=1, partner_first=False, partner_strand=1),
}


def partner_placement(grammar: Grammar, widths: Mapping[str, int], tf_start: int, tf_strand: int) -> tuple[int, int]:
    """(start, strand) of the partner that forms the preferred pair with a TF site."""
    w_tf, w_partner = widths[grammar.tf], widths[grammar.partner]
    after = (tf_strand == 1) != grammar.partner_first
    start = tf_start + w_tf + grammar.gap if after else tf_start - grammar.gap - w_partner
    return start, grammar.partner_strand * tf_strand


def window_scores(codes: Array, motif: Motif) -> Array:
    """Log-odds (bits) of every window on both strands: codes uint8 ``[n, length]`` -> float32
    ``[n, 2, length - width + 1]``; [:, 0] the forward strand, [:, 1] the site read on the reverse
    strand, both indexed by the window's forward start. N (code 4) scores 0."""
    log_odds = np.hstack([motif.log_odds(), np.zeros((motif.width, 1), dtype=np.float32)])  # [w, 5]
    reverse = np.hstack([log_odds[::-1, 3::-1], np.zeros((motif.width, 1), dtype=np.float32)])
    n, length = codes.shape
    positions = length - motif.width + 1
    out = np.zeros((n, 2, positions), dtype=np.float32)
    for k in range(motif.width):
        window = codes[:, k : k + positions]
        out[:, 0] += log_odds[k][window]
        out[:, 1] += reverse[k][window]
    return out


@dataclass(frozen=True)
class BindingRule:
    """The binding rule of one TF (see the module docstring)."""

    tf: str
    threshold: float
    temperature: float = TEMPERATURE
    site_margin: float = SITE_MARGIN
    cluster_bonus: float = CLUSTER_BONUS
    composite_bonus: float = COMPOSITE_BONUS

    @property
    def site_min(self) -> float:
        return self.threshold - self.site_margin

    def probability(self, energy: Array) -> Array:
        """float64 ``[n]`` from energies (bits)."""
        return np.asarray(1.0 / (1.0 + np.exp2((self.threshold - np.asarray(energy)) / self.temperature)))

    def energy(self, codes: Array, motifs: Mapping[str, Motif]) -> Array:
        """float64 ``[n]``: E of each sequence (codes uint8 ``[n, length]``)."""
        motif = motifs[self.tf]
        scores = window_scores(codes, motif)
        best = scores.reshape(codes.shape[0], -1).max(axis=1).astype(np.float64)
        grammar = GRAMMARS.get(self.tf)
        partner_scores = window_scores(codes, motifs[grammar.partner]) if grammar else None
        partner_min = rule_for(grammar.partner).site_min if grammar else 0.0
        widths = {name: m.width for name, m in motifs.items()}
        energy = best.copy()
        for i in np.flatnonzero(best >= self.site_min):
            sites = _sites(scores[i], self.site_min, motif.width)
            for start, strand, score in sites:
                near = sum(
                    1
                    for other, _, _ in sites
                    if other != start and max(other, start) - min(other, start) + motif.width <= CLUSTER_SPAN
                )
                e = score + self.cluster_bonus * min(near, MAX_CLUSTER_PARTNERS)
                if grammar is not None and partner_scores is not None:
                    p_start, p_strand = partner_placement(grammar, widths, start, strand)
                    inside = 0 <= p_start < partner_scores.shape[2]
                    if inside and partner_scores[i, 0 if p_strand == 1 else 1, p_start] >= partner_min:
                        e += self.composite_bonus
                energy[i] = max(energy[i], e)
        return np.asarray(energy, dtype=np.float64)

    def label(self, codes: Array, motifs: Mapping[str, Motif], rng: np.random.Generator) -> tuple[Array, Array]:
        """(labels float32 ``[n]`` drawn from the probabilities, probabilities float64 ``[n]``)."""
        p = self.probability(self.energy(codes, motifs))
        return (rng.random(p.size) < p).astype(np.float32), p


def _sites(scores: Array, site_min: float, width: int) -> list[tuple[int, int, float]]:
    """Non-overlapping sites of one sequence, strongest first: (start, strand, score)."""
    strand_index, starts = np.nonzero(scores >= site_min)
    values = scores[strand_index, starts]
    taken = np.zeros(scores.shape[1] + width, dtype=bool)
    out: list[tuple[int, int, float]] = []
    for k in np.argsort(-values, kind="stable"):
        start = int(starts[k])
        if not taken[start : start + width].any():
            taken[start : start + width] = True
            out.append((start, 1 if strand_index[k] == 0 else -1, float(values[k])))
    return out


def rule_for(tf: str) -> BindingRule:
    return BindingRule(tf, THRESHOLDS[tf])


def label_tasks(
    codes: Array, tasks: Sequence[str], motifs: Mapping[str, Motif], rng: np.random.Generator
) -> tuple[Array, Array]:
    """(labels float32 ``[n, tasks]``, probabilities float64 ``[n, tasks]``) by each task's rule."""
    pairs = [rule_for(tf).label(codes, motifs, rng) for tf in tasks]
    return np.stack([p[0] for p in pairs], axis=1), np.asarray(np.stack([p[1] for p in pairs], axis=1))


def suggest_threshold(motif: Motif, background_best: Array) -> float:
    """The table's derivation from a motif and the best scores of 1,000 bp background windows."""
    mean, sd = motif.instance_score_stats()
    value = max(mean - sd / 2, float(np.quantile(background_best, 0.9)))
    return round(min(value, motif.max_score - 1.5), 1)
