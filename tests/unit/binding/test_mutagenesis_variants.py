"""Saturation mutagenesis batches and variant windows against a real (tiny) reference FASTA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pysam
import pytest

from genoserve.binding import encoding, mutagenesis
from genoserve.binding.variants import ReferenceGenome, VariantSpec, check_variant, windows


def test_saturation_batch_holds_every_substitution_once() -> None:
    onehot = encoding.one_hot(["ACGN"])[0]
    batch, positions, bases = mutagenesis.saturation_batch(onehot)
    assert batch.shape == (13, 4, 4)
    assert encoding.decode(batch[:1]) == ["ACGN"]
    mutants = set(encoding.decode(batch[1:]))
    assert mutants == {"CCGN", "GCGN", "TCGN", "AAGN", "AGGN", "ATGN", "ACAN", "ACCN", "ACTN", "ACGC", "ACGG", "ACGT"}
    # scores = number of G's: deltas are +1 where a G is introduced, -1 where the G is removed
    scores = (batch[:, :, 2] == 1.0).sum(axis=1, keepdims=True).astype(np.float32)
    deltas = mutagenesis.deltas(scores, positions, bases, 4)
    assert deltas.shape == (4, 4, 1)
    assert deltas[0, 2, 0] == 1  # A -> G adds a G
    assert deltas[0, 0, 0] == 0  # the own base: zero
    assert deltas[2, 2, 0] == 0
    assert deltas[2, 0, 0] == -1  # G -> A removes the G
    assert deltas[3, 2, 0] == 1  # N -> G


@pytest.fixture
def reference(tmp_path: Path) -> ReferenceGenome:
    path = tmp_path / "ref.fa"
    path.write_text(">chrT\n" + "AAAAACCCCCGGGGGTTTTT" + "\n>chrU\nACGT\n")
    pysam.faidx(str(path))
    return ReferenceGenome("test", path)


def test_snv_and_indel_windows_centre_the_variant(reference: ReferenceGenome) -> None:
    snv = VariantSpec("v1", "chrT", 8, "C", "T")  # 1-based: position 8 is the third C
    assert windows(snv, reference, 7) == ("ACCCCCG", "ACCTCCG")
    deletion = VariantSpec("v2", "chrT", 8, "CCC", "C")
    assert windows(deletion, reference, 7) == ("ACCCCCG", "ACCCGGG")
    insertion = VariantSpec("v3", "chrT", 8, "C", "CAA")
    assert windows(insertion, reference, 7) == ("ACCCCCG", "ACCCAAC")
    edge = VariantSpec("v4", "chrU", 1, "A", "G")
    assert windows(edge, reference, 7) == ("NNNACGT", "NNNGCGT")  # N beyond the contig start


@pytest.mark.parametrize(
    ("variant", "rule"),
    [
        (VariantSpec("x", "chrT", 8, "G", "T"), "REF 'G' does not match the reference 'C' at chrT:8"),
        (VariantSpec("x", "chr9", 8, "C", "T"), "chrom 'chr9' is not in reference test"),
        (VariantSpec("x", "chrT", 99, "C", "T"), "pos 99 is outside chrT (1..20)"),
        (VariantSpec("x", "chrT", 8, "C", "<DEL>"), "symbolic"),
        (VariantSpec("x", "chrT", 8, "C", ""), "alt is empty"),
        (VariantSpec("x", "chrT", 8, "C", "C"), "alt equals ref"),
        (VariantSpec("x", "chrT", 8, "C", "A" * 60), "at most 50"),
    ],
)
def test_bad_variants_get_their_own_rule(reference: ReferenceGenome, variant: VariantSpec, rule: str) -> None:
    problem = check_variant(variant, reference)
    assert problem is not None
    assert rule in problem


def test_lower_case_ref_matches(reference: ReferenceGenome) -> None:
    assert check_variant(VariantSpec("x", "chrT", 8, "c", "t"), reference) is None
