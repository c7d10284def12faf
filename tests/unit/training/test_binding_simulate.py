"""The binding simulator: labels follow binding (the best site's log-odds, raised by clusters and
the preferred pair), decoys keep the composition of positives, held-out sets are labelled by
construction, and everything is reproducible from its seed."""

from __future__ import annotations

import numpy as np
import pytest

from genoserve.training.binding import benchmark, rule, simulate
from genoserve.training.binding.motifs import Motif, load_motifs
from genoserve.training.binding.onehot import complement_codes, decode, encode, one_hot, reverse_complement
from genoserve.training.binding.rule import GRAMMARS, THRESHOLDS, partner_placement, rule_for, window_scores
from genoserve.training.binding.shuffle import dinucleotide_counts, dinucleotide_shuffle
from genoserve.training.binding.simulate import Backgrounds, SimulatedSet, gc_fraction

TASKS = ("CTCF", "GATA1", "SPI1", "CEBPA", "FOXA1", "HNF4A", "REST", "MAX", "YY1", "NRF1")


@pytest.fixture(scope="module")
def motifs() -> dict[str, Motif]:
    return load_motifs()


@pytest.fixture(scope="module")
def backgrounds() -> Backgrounds:
    return Backgrounds.from_fasta(simulate.REFERENCE, simulate.HELD_OUT_REGIONS)


def _same(a: SimulatedSet, b: SimulatedSet) -> bool:
    return (
        np.array_equal(a.codes, b.codes)
        and np.array_equal(a.labels, b.labels)
        and np.array_equal(a.scenario, b.scenario)
        and a.sites == b.sites
    )


def test_one_hot_layout_and_reverse_complement() -> None:
    codes = encode("ACGTNacgtn")[None]
    x = one_hot(codes)
    assert x.shape == (1, 10, 4)
    np.testing.assert_array_equal(x[0, :4], np.eye(4, dtype=np.float32))
    np.testing.assert_array_equal(x[0, 4], np.full(4, 0.25, dtype=np.float32))
    assert decode(complement_codes(encode("AACGTN"))) == "NACGTT"
    np.testing.assert_array_equal(reverse_complement(x), one_hot(complement_codes(codes)))


def test_same_seed_same_data_and_another_seed_other_data(motifs: dict[str, Motif], backgrounds: Backgrounds) -> None:
    def binding(seed: int) -> SimulatedSet:
        return simulate.simulate_binding(motifs, "CTCF", 200, np.random.default_rng(seed), backgrounds)

    def multitask(seed: int) -> SimulatedSet:
        return simulate.simulate_multitask(motifs, TASKS, 40, np.random.default_rng(seed), backgrounds)

    assert _same(binding(7), binding(7))
    assert not np.array_equal(binding(7).codes, binding(8).codes)
    assert _same(multitask(7), multitask(7))
    assert not np.array_equal(multitask(7).codes, multitask(8).codes)


def test_dinucleotide_shuffle_keeps_every_dinucleotide_count() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        codes = rng.integers(0, 4, size=int(rng.integers(3, 150))).astype(np.uint8)
        shuffled = dinucleotide_shuffle(codes, rng)
        np.testing.assert_array_equal(dinucleotide_counts(shuffled), dinucleotide_counts(codes))
        assert (shuffled[0], shuffled[-1]) == (codes[0], codes[-1])
    codes = encode("ACGTTGCAAGCTTCGA" * 6)
    assert len({decode(dinucleotide_shuffle(codes, rng)) for _ in range(20)}) > 10


def test_window_scores_are_the_log_odds_of_each_window_on_both_strands(motifs: dict[str, Motif]) -> None:
    motif = motifs["CTCF"]
    site = encode(motif.consensus)
    codes = encode("A" * 20 + motif.consensus + "T" * 30 + decode(complement_codes(site)) + "C" * 10)[None]
    scores = window_scores(codes, motif)
    assert scores[0, 0, 20] == pytest.approx(motif.max_score, abs=1e-4)
    assert scores[0, 1, 20 + motif.width + 30] == pytest.approx(motif.max_score, abs=1e-4)
    assert scores.max() == pytest.approx(motif.max_score, abs=1e-4)


def test_probability_rises_with_the_best_site_and_cooperativity(motifs: dict[str, Motif]) -> None:
    """A lone strong site is bound; a weak one is not, unless two more sites or the partner join it."""
    tf, grammar = "CTCF", GRAMMARS["CTCF"]
    motif, partner = motifs[tf], motifs[grammar.partner]
    ctcf = rule_for(tf)
    rng = np.random.default_rng(0)
    strong = simulate.sample_in_band(motif, rng, (3.0, 4.0))
    weak = simulate.sample_in_band(motif, rng, (-2.5, -1.5))
    empty = encode("AT" * 50 + "A")  # 101 bp, no site

    def sequence(*placed: tuple[int, np.ndarray, int]) -> np.ndarray:  # (start, codes, strand)
        codes = empty.copy()
        for start, instance, strand in placed:
            codes[start : start + instance.size] = instance if strand == 1 else complement_codes(instance)
        return codes

    widths = {name: m.width for name, m in motifs.items()}
    p_start, p_strand = partner_placement(grammar, widths, 10, 1)
    partner_site = encode(partner.consensus)
    batch = np.stack([
        sequence(),
        sequence((40, strong, 1)),
        sequence((40, weak, -1)),
        sequence((5, weak, 1), (40, weak, -1), (75, weak, 1)),
        sequence((10, weak, 1), (p_start, partner_site, p_strand)),
        sequence((10, weak, 1), (p_start + 6, partner_site, p_strand)),
    ])  # fmt: skip
    p = ctcf.probability(ctcf.energy(batch, motifs))
    none, lone_strong, lone_weak, cluster, composite, misspaced = p
    assert none < 1e-6
    assert lone_strong > 0.99  # a lone site is bound: no grammar needed
    assert lone_weak < 0.1
    assert cluster > 0.9
    assert composite > 0.9
    assert misspaced == pytest.approx(lone_weak, abs=0.05)


@pytest.mark.parametrize("tf", sorted(GRAMMARS))
def test_training_mix_sites_labels_and_decoys(tf: str, motifs: dict[str, Motif], backgrounds: Backgrounds) -> None:
    data = simulate.simulate_binding(motifs, tf, 600, np.random.default_rng(1), backgrounds)
    assert data.codes.shape == (600, 101)
    assert data.labels.shape == (600, 1)
    for codes, sites in zip(data.codes, data.sites, strict=True):
        covered = np.zeros(codes.size, dtype=int)
        for site in sites:
            window = codes[site.start : site.end]
            assert decode(window if site.strand == 1 else complement_codes(window)) == site.bases
            covered[site.start : site.end] += 1
        assert covered.max() <= 1
    # Labels are the rule's draws; decoys are unbound by construction.
    decoy = np.isin(data.scenario, simulate.DECOY_SCENARIOS)
    assert (data.labels[decoy] == 0).all()
    energy = rule_for(tf).probability(rule_for(tf).energy(data.codes, motifs))
    np.testing.assert_allclose(data.probability[~decoy, 0], energy[~decoy])
    by = {s: float(data.labels[data.scenario == s].mean()) for s in simulate.BINDING_MIX}
    assert by["site"] > 0.3
    assert by["composite"] > by["misspaced"] + 0.25
    assert 0.15 < float(data.labels.mean()) < 0.4


@pytest.mark.parametrize("tf", sorted(GRAMMARS))
def test_single_site_set_decoys_share_the_positives_composition(
    tf: str, motifs: dict[str, Motif], backgrounds: Backgrounds
) -> None:
    n = 300
    data = benchmark.single_site_set(motifs, tf, n, np.random.default_rng(2), backgrounds, 101)
    assert data.labels[:n].all()
    assert not data.labels[n:].any()
    positives, negatives = data.codes[:n], data.codes[n:]
    gc_gaps = []
    for i, kind in enumerate(data.scenario[n:]):
        if kind == "dinucleotide_shuffled":
            np.testing.assert_array_equal(dinucleotide_counts(negatives[i]), dinucleotide_counts(positives[i]))
        elif kind == "genome":
            gc_gaps.append(abs(gc_fraction(negatives[i]) - gc_fraction(positives[i])))
    assert np.mean(gc_gaps) < 0.015
    shuffled = [sites for sites, kind in zip(data.sites, data.scenario, strict=True) if kind == "column_shuffled"]
    planted_gc = np.mean([gc_fraction(encode(s.bases)) for sites in shuffled for s in sites])
    real_gc = np.mean([gc_fraction(encode(s.bases)) for sites in data.sites[:n] for s in sites])
    assert abs(planted_gc - real_gc) < 0.05
    # Positives are the JASPAR matrix's own samples: their mean log-odds is the matrix's expectation.
    scores = [motifs[tf].score(encode(s.bases)) for sites in data.sites[:n] for s in sites]
    mean, sd = motifs[tf].instance_score_stats()
    assert abs(float(np.mean(scores)) - mean) < 4 * sd / np.sqrt(n)


def test_grammar_sets_hold_what_they_say(motifs: dict[str, Motif], backgrounds: Backgrounds) -> None:
    rng = np.random.default_rng(3)
    widths = {name: m.width for name, m in motifs.items()}
    cluster = benchmark.grammar_set(motifs, "GATA1", "cluster_vs_lone", 100, rng, backgrounds, 101)
    counts = [sum(s.motif == "GATA1" for s in sites) for sites in cluster.sites]
    assert counts == [3] * 50 + [1] * 50
    pair = benchmark.grammar_set(motifs, "GATA1", "composite_vs_misspaced", 100, rng, backgrounds, 101)
    grammar = GRAMMARS["GATA1"]
    for label, sites in zip(pair.labels[:, 0], pair.sites, strict=True):
        target = next(s for s in sites if s.role == "target")
        partner = next(s for s in sites if s.role == "partner")
        preferred = (partner.start, partner.strand) == partner_placement(grammar, widths, target.start, target.strand)
        assert preferred == (label == 1)
    # Every planted site is weak: alone, mostly unbound.
    weak = [motifs[s.motif].score(encode(s.bases)) for sites in cluster.sites for s in sites]
    assert max(weak) <= THRESHOLDS["GATA1"] + simulate.WEAK_BAND[1] + 1e-6


def test_multitask_labels_follow_each_tasks_rule(motifs: dict[str, Motif], backgrounds: Backgrounds) -> None:
    data = simulate.simulate_multitask(motifs, TASKS, 120, np.random.default_rng(4), backgrounds)
    assert data.codes.shape == (120, 1000)
    assert data.labels.shape == (120, len(TASKS))
    for j, tf in enumerate(TASKS):
        expected = rule_for(tf).probability(rule_for(tf).energy(data.codes, motifs))
        np.testing.assert_allclose(data.probability[:, j], expected)
    prevalence = data.labels.mean(axis=0)
    assert ((prevalence > 0.05) & (prevalence < 0.6)).all(), prevalence


def test_thresholds_table_is_what_its_derivation_gives(motifs: dict[str, Motif]) -> None:
    train = Backgrounds.from_fasta(simulate.REFERENCE, simulate.TRAIN_REGIONS)
    windows = train.real(np.random.default_rng(0), 500, 1000)  # the derivation: 500 windows, seed 0
    for name, threshold in THRESHOLDS.items():
        best = window_scores(windows, motifs[name]).reshape(500, -1).max(axis=1)
        assert rule.suggest_threshold(motifs[name], best) == pytest.approx(threshold, abs=0.051), name
