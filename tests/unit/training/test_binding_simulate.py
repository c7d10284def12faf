"""The binding simulator: reproducible from its seed, GC-matched backgrounds, and planted instances
exactly where the sites (and so the labels) say."""

from __future__ import annotations

import numpy as np
import pytest

from genoserve.training.binding import simulate
from genoserve.training.binding.motifs import Motif, load_motifs, max_log_odds
from genoserve.training.binding.onehot import complement_codes, decode, encode, one_hot, reverse_complement
from genoserve.training.binding.simulate import (
    GRAMMARS,
    Backgrounds,
    SimulatedSet,
    gc_fraction,
    is_bound,
    partner_placement,
)

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
    assert x.dtype == np.float32
    assert x.shape == (1, 10, 4)
    np.testing.assert_array_equal(x[0, :4], np.eye(4, dtype=np.float32))
    np.testing.assert_array_equal(x[0, 4], np.full(4, 0.25, dtype=np.float32))
    np.testing.assert_array_equal(x[0, 5:], x[0, :5])
    assert decode(complement_codes(encode("AACGTN"))) == "NACGTT"
    np.testing.assert_array_equal(reverse_complement(x), one_hot(complement_codes(codes)))


def test_same_seed_same_data_and_another_seed_other_data(motifs: dict[str, Motif], backgrounds: Backgrounds) -> None:
    def binding(seed: int) -> SimulatedSet:
        return simulate.simulate_binding(motifs, "CTCF", 200, np.random.default_rng(seed), backgrounds)

    def multitask(seed: int) -> SimulatedSet:
        return simulate.simulate_multitask(motifs, TASKS, 50, np.random.default_rng(seed), backgrounds)

    assert _same(binding(7), binding(7))
    assert not np.array_equal(binding(7).codes, binding(8).codes)
    assert _same(multitask(7), multitask(7))
    assert not np.array_equal(multitask(7).codes, multitask(8).codes)


def test_backgrounds_are_real_sequence_and_gc_matched_random(backgrounds: Backgrounds) -> None:
    rng = np.random.default_rng(0)
    real = backgrounds.real(rng, 3000, 101)
    random = backgrounds.gc_matched(rng, 3000, 101)
    assert (real < 4).all()
    assert (random < 4).all()
    gc_real, gc_random = gc_fraction(real), gc_fraction(random)
    # Same GC distribution (the random ones add binomial noise around each drawn real fraction).
    assert abs(gc_real.mean() - gc_random.mean()) < 0.01
    np.testing.assert_allclose(
        np.quantile(gc_random, [0.1, 0.5, 0.9]), np.quantile(gc_real, [0.1, 0.5, 0.9]), atol=0.04
    )
    # Human sequence, unlike i.i.d. sequence, is depleted of CpG: the random half is not a copy of it.
    cpg = lambda c: float(((c[:, :-1] == 1) & (c[:, 1:] == 2)).mean())  # noqa: E731
    assert cpg(real) < 0.6 * cpg(random)
    # The real windows are substrings of the held-out reference (either strand).
    reference = "".join(decode(s) for s in backgrounds.segments)
    for row in real[:20]:
        window = decode(row)
        assert window in reference or decode(complement_codes(row)) in reference
    _, is_real = backgrounds.sample(rng, 101, 50)
    assert int(is_real.sum()) == 51


@pytest.mark.parametrize("tf", sorted(GRAMMARS))
def test_planted_instances_are_where_the_labels_say(
    tf: str, motifs: dict[str, Motif], backgrounds: Backgrounds
) -> None:
    data = simulate.simulate_binding(motifs, tf, 600, np.random.default_rng(1), backgrounds)
    widths = {name: m.width for name, m in motifs.items()}
    grammar = GRAMMARS[tf]
    assert data.codes.shape == (600, 101)
    assert data.labels.shape == (600, 1)
    assert data.labels.mean() == 0.5
    for codes, label, scenario, sites in zip(data.codes, data.labels[:, 0], data.scenario, data.sites, strict=True):
        # Every site's bases are in the sequence at its position, on its strand, and sites never overlap.
        covered = np.zeros(codes.size, dtype=int)
        for site in sites:
            window = codes[site.start : site.end]
            assert decode(window if site.strand == 1 else complement_codes(window)) == site.bases
            covered[site.start : site.end] += 1
        assert covered.max() <= 1
        assert label == is_bound(sites, tf, widths)
        targets = [s for s in sites if s.motif == tf]
        partners = [s for s in sites if s.role == "partner"]
        if scenario == "cluster":
            assert len(targets) >= 3
        elif scenario == "composite":
            start, strand = partner_placement(grammar, widths, targets[0].start, targets[0].strand)
            assert (partners[0].start, partners[0].strand) == (start, strand)
        elif scenario == "lone":
            assert 1 <= len(targets) <= 2
        elif scenario == "misspaced":
            start, strand = partner_placement(grammar, widths, targets[0].start, targets[0].strand)
            assert partners[0].strand != strand or abs(partners[0].start - start) > simulate.MISSPACING_MARGIN
        else:
            assert not targets
    # Planted instances are strong sites: their PWM score is far above that of background windows.
    log_odds = motifs[tf].log_odds()
    planted = [one_hot(encode(s.bases)[None]) for sites in data.sites for s in sites if s.motif == tf]
    planted_scores = np.concatenate([max_log_odds(x, log_odds) for x in planted])
    background_scores = max_log_odds(one_hot(backgrounds.real(np.random.default_rng(2), 500, widths[tf])), log_odds)
    assert np.median(planted_scores) > np.quantile(background_scores, 0.99)


def test_multitask_labels_follow_the_rule_for_every_task(motifs: dict[str, Motif], backgrounds: Backgrounds) -> None:
    data = simulate.simulate_multitask(motifs, TASKS, 200, np.random.default_rng(3), backgrounds)
    widths = {name: m.width for name, m in motifs.items()}
    assert data.codes.shape == (200, 1000)
    assert data.labels.shape == (200, len(TASKS))
    for labels, sites in zip(data.labels, data.sites, strict=True):
        assert list(labels) == [is_bound(sites, tf, widths) for tf in TASKS]
    prevalence = data.labels.mean(axis=0)
    assert ((prevalence > 0.12) & (prevalence < 0.4)).all(), prevalence
