"""The local realigner: alignment scoring, window selection, haplotype assembly, read realignment."""

from __future__ import annotations

import numpy as np

from genoserve.variants.reads import OP_D, OP_I, OP_M, OP_S, Read
from genoserve.variants.realign import RealignerOptions, realign_region
from genoserve.variants.realign_graph import candidate_haplotypes
from genoserve.variants.realign_reads import read_to_reference_cigar
from genoserve.variants.realign_sw import local_align
from genoserve.variants.realign_windows import WindowOptions, select_windows

RNG = np.random.default_rng(7)
REF = "".join(RNG.choice(list("ACGT"), 1200))
OFFSET = 5000  # contig position of REF[0]


def _read(name: str, start: int, seq: str, cigar: list[tuple[int, int]], mq: int = 60) -> Read:
    span = sum(n for op, n in cigar if op in (OP_M, OP_D))
    return Read(f"{name}/0", name, 0, start, start + span, cigar, seq, np.full(len(seq), 35, np.uint8), mq, False, 300)


def test_local_alignment_scores_clips_and_left_aligns() -> None:
    flank_l, flank_r = "ACCTGATTCAGGCTTAAC", "TTGCAAGCTGCCATTG"
    # A 2-bp deletion inside a GA repeat is placed at its leftmost position.
    aln = local_align(flank_l + "CAGAGAT" + flank_r, flank_l + "CAGAGAGAT" + flank_r)
    assert aln.cigar == [(OP_M, 19), (OP_D, 2), (OP_M, 22)]
    assert aln.score == 4 * 41 - (8 + 2)  # a gap of length g costs 8 + (g - 1) * 2
    # Mismatching read ends are soft-clipped (a mismatch costs 6, a match gains 4).
    aln = local_align("TTTACGTAC", "GGGACGTACGGG")
    assert (aln.target_begin, aln.cigar, aln.score) == (3, [(OP_S, 3), (OP_M, 6)], 24)


def test_windows_surround_variant_evidence() -> None:
    ref = REF
    alt = ref[:600] + ("A" if ref[600] != "A" else "C") + ref[601:]
    reads = [_read(f"r{i}", OFFSET + 550 + i, alt[550 + i : 650 + i], [(OP_M, 100)]) for i in range(3)]
    reads += [_read("ref", OFFSET + 550, ref[550:650], [(OP_M, 100)])]
    windows = select_windows(reads, ref, OFFSET, OFFSET + 500, OFFSET + 700, OFFSET + 10_000)
    assert windows == [(OFFSET + 600 - 80, OFFSET + 600 + 80)]
    # One supporting read is not enough (ws_min_num_supporting_reads = 2).
    assert select_windows(reads[2:], ref, OFFSET, OFFSET + 500, OFFSET + 700, OFFSET + 10_000) == []
    # Candidates closer than 2 * 80 bp share a window.
    far = WindowOptions(min_windows_distance=10)
    assert len(select_windows(reads, ref, OFFSET, OFFSET + 500, OFFSET + 700, OFFSET + 10_000, far)) == 1


def test_graph_finds_the_alt_haplotype_and_prunes_single_errors() -> None:
    window = REF[100:300]
    alt = window[:100] + "TTTT" + window[100:]  # a 4-bp insertion
    reads = [_read(f"a{i}", 0, alt[10 + 5 * i : 110 + 5 * i], [(OP_M, 100)]) for i in range(4)]
    error = window[:60] + ("G" if window[60] != "G" else "T") + window[61:]
    reads.append(_read("e", 0, error[20:120], [(OP_M, 100)]))  # a one-read error: pruned
    assert candidate_haplotypes(window, reads) == sorted([window, alt])
    # Low mapping quality reads are not assembled.
    assert candidate_haplotypes(window, [_read(r.name, 0, r.seq, r.cigar, mq=10) for r in reads]) == [window]


def test_clipped_insertion_reads_are_realigned_with_the_insertion() -> None:
    ins = "GATTACAGAT"
    alt = REF[:600] + ins + REF[600:]
    reads: list[Read] = []
    for i in range(8):
        s = 520 + 7 * i
        seq = alt[s : s + 100]
        # What a mapper often reports: the read aligned up to the insertion and clipped after it.
        aligned = 600 - s
        reads.append(_read(f"r{i}", OFFSET + s, seq, [(OP_M, aligned), (OP_S, 100 - aligned)]))
    # Reads the mapper got right cover the rest of the window (an uncovered stretch of a haplotype
    # discards it, as in DeepVariant).
    for i in range(6):
        s = 515 + 7 * i
        reads.append(_read(f"ok{i}", OFFSET + s, alt[s : s + 100], [(OP_M, 600 - s), (OP_I, 10), (OP_M, s - 510)]))
        reads.append(_read(f"before{i}", OFFSET + 440 + 10 * i, REF[440 + 10 * i : 540 + 10 * i], [(OP_M, 100)]))
        reads.append(_read(f"after{i}", OFFSET + 640 + 10 * i, REF[640 + 10 * i : 740 + 10 * i], [(OP_M, 100)]))
    reads.append(_read("plain", OFFSET + 300, REF[300:400], [(OP_M, 100)]))
    out = {r.key: r for r in realign_region(reads, REF, OFFSET, OFFSET + 10_000, OFFSET, OFFSET + 1000)}
    assert out["plain/0"].cigar == [(OP_M, 100)]
    assert out["plain/0"].start == OFFSET + 300
    for i in range(8):
        s = 520 + 7 * i
        read = out[f"r{i}/0"]
        assert read.start == OFFSET + s
        assert read.cigar == [(OP_M, 600 - s), (OP_I, len(ins)), (OP_M, 100 - len(ins) - (600 - s))]
    # Switched off, reads keep the mapper's alignment.
    same = realign_region(reads, REF, OFFSET, OFFSET + 10_000, OFFSET, OFFSET + 1000, RealignerOptions(enabled=False))
    assert [r.cigar for r in same] == [r.cigar for r in reads]


def test_read_to_reference_composition_through_a_haplotype_deletion() -> None:
    from genoserve.variants.realign_reads import _Placement

    # Haplotype = reference with 3 bases deleted after 50; the read covers hap[20:120] ungapped.
    hap_cigar = [(OP_M, 50), (OP_D, 3), (OP_M, 150)]
    cigar = read_to_reference_cigar(100, _Placement(400, 20, [(OP_M, 100)]), hap_cigar)
    assert cigar == [(OP_M, 30), (OP_D, 3), (OP_M, 70)]
    # An insertion in the haplotype becomes an insertion in the read.
    cigar = read_to_reference_cigar(100, _Placement(400, 40, [(OP_M, 100)]), [(OP_M, 50), (OP_I, 4), (OP_M, 150)])
    assert cigar == [(OP_M, 10), (OP_I, 4), (OP_M, 86)]


def test_haplotype_support_is_checked_only_where_reads_share_its_kmers() -> None:
    from genoserve.variants.realign_reads import _fast_align, _index

    # FastAlignReadsToHaplotype checks coverage only at positions whose 32-mer some read holds:
    # a stretch no read's k-mers reach does not discard the haplotype.
    hap = REF[:300]
    reads = [hap[20:120], hap[200:300]]
    score, placements = _fast_align(hap, False, reads, _index(reads), 20, 20)
    assert score == 2 * 4 * 100
    assert [p.position for p in placements] == [20, 200]
    # A read whose k-mers do occur there but which fits with 3 mismatches (more than 2) leaves those
    # positions uncovered: the haplotype is discarded.
    bad = hap[100:190] + "".join("A" if b != "A" else "C" for b in hap[190:193]) + hap[193:200]
    reads.append(bad)
    score, placements = _fast_align(hap, False, reads, _index(reads), 20, 20)
    assert score == 0
    assert all(p.score == 0 for p in placements)
    # The reference haplotype is never discarded.
    score, _ = _fast_align(hap, True, reads, _index(reads), 20, 20)
    assert score == 2 * 4 * 100


def test_low_quality_alleles_do_not_open_windows() -> None:
    # window_selector.cc skips alleles the counter flags low quality: a substitution whose base is
    # below ws_min_base_quality (20), an insertion or soft clip whose bases average below it.
    ref = REF
    alt = ref[:600] + ("A" if ref[600] != "A" else "C") + ref[601:]
    reads = [_read(f"r{i}", OFFSET + 550 + i, alt[550 + i : 650 + i], [(OP_M, 100)]) for i in range(3)]
    for read in reads:
        read.quals[600 - 550 - int(read.name[1:])] = 19
    assert select_windows(reads, ref, OFFSET, OFFSET + 500, OFFSET + 700, OFFSET + 10_000) == []
    for read in reads:
        read.quals[:] = 20
    windows = select_windows(reads, ref, OFFSET, OFFSET + 500, OFFSET + 700, OFFSET + 10_000)
    assert windows == [(OFFSET + 520, OFFSET + 680)]
    # Soft clips: the mean quality of the clipped bases decides.
    clipped = [_read(f"c{i}", OFFSET + 500, ref[500:590] + "ACGTACGTAC", [(OP_M, 90), (OP_S, 10)]) for i in range(2)]
    for read in clipped:
        read.quals[90:] = [30] * 5 + [9] * 5  # mean 19.5
    assert select_windows(clipped, ref, OFFSET, OFFSET + 400, OFFSET + 700, OFFSET + 10_000) == []
    for read in clipped:
        read.quals[95:] = 10  # mean 20
    assert len(select_windows(clipped, ref, OFFSET, OFFSET + 400, OFFSET + 700, OFFSET + 10_000)) == 1


def test_haplotype_alignment_left_aligns_indels_in_long_homopolymers() -> None:
    # The haplotype has 2 more T's and a C->T inside a 30-T run: the insertion goes to the left
    # end of the run (as Smith-Waterman's traceback puts it), however long the run is.
    left, right = REF[:200], REF[300:500]
    reference = left + "G" + "T" * 30 + "C" + "T" * 7 + "A" + right
    haplotype = left + "G" + "T" * 40 + "A" + right
    aln = local_align(haplotype, reference)
    assert (aln.target_begin, aln.cigar) == (0, [(OP_M, 201), (OP_I, 2), (OP_M, len(reference) - 201)])


def test_read_cigar_follows_ssw_banded_traceback() -> None:
    # A read (NA12878, chr20:10008888, after the CA repeat) against its haplotype: equal lengths, so
    # SSW's CIGAR step searches a band of 1 diagonal either side and the score is reachable within
    # it; a full-matrix traceback would instead take both insertions before both deletions.
    read = "TCCAGCCTGGGCGACAGAGTGAGACACCGTCTCAAAAAAAAAAAAAATAAATAATTTTTTTAACCCCAAACACCACACACAACACACACCCCCCCCCTTTT"
    hap = "TCCAGCCTGGGCGACAGAGTGAGACACCGTCTCAAAAAAAAAAAAATCAATTATATATTTAACCACACACACACACACACACACACACACACACACCTTTT"
    aln = local_align(read, hap)
    assert aln.score == 274
    assert aln.cigar == [
        (OP_M, 33),
        (OP_I, 1),
        (OP_M, 39),
        (OP_D, 1),
        (OP_M, 7),
        (OP_I, 1),
        (OP_M, 8),
        (OP_D, 1),
        (OP_M, 12),
    ]


def test_window_alleles_need_two_reads_each() -> None:
    # ws_config min_allele_support 2 (DeepVariant 1.9's run_info): an allele seen in one read only
    # adds nothing, even where another read shows a different allele at the same position.
    ref = REF
    bases = [b for b in "ACGT" if b != ref[600]]
    reads = [
        _read(f"r{i}", OFFSET + 550 + i, ref[550 + i : 600] + bases[i] + ref[601 : 650 + i], [(OP_M, 100)])
        for i in range(2)
    ]
    assert select_windows(reads, ref, OFFSET, OFFSET + 500, OFFSET + 700, OFFSET + 10_000) == []
    reads.append(_read("r2", OFFSET + 560, ref[560:600] + bases[0] + ref[601:660], [(OP_M, 100)]))
    windows = select_windows(reads, ref, OFFSET, OFFSET + 500, OFFSET + 700, OFFSET + 10_000)
    assert windows == [(OFFSET + 520, OFFSET + 680)]


def test_ssw_alignment_edge_cases_and_n_bases() -> None:
    from genoserve.variants.realign_sw import QueryAligner

    # Nothing to align, or nothing scoring above 0: score 0, no CIGAR (the read keeps its alignment).
    for query, target in (("", "ACGT"), ("ACGT", ""), ("AAAA", "CCCC")):
        aln = local_align(query, target)
        assert (aln.score, aln.target_begin, aln.cigar) == (0, 0, [])
    # N scores 0 against anything (SSW's default matrix), so it neither breaks nor extends a match.
    aln = local_align("ACGTTGCANACGTTGCA", "GGACGTTGCAAACGTTGCAGG")
    assert (aln.score, aln.target_begin, aln.cigar) == (16 * 4, 2, [(OP_M, 17)])
    # One query profile serves many targets with the same results as separate alignments.
    query = REF[300:400]
    targets = [REF[250:450], REF[300:350] + "T" + REF[350:450], REF[:200], REF[280:330] + REF[333:420]]
    aligner = QueryAligner(query)
    for target in targets:
        one, many = local_align(query, target), aligner.align(target)
        assert (many.score, many.target_begin, many.cigar) == (one.score, one.target_begin, one.cigar)
    # The target lacks 3 of the query's bases: an insertion, the query's other bases matched.
    aln = aligner.align(targets[3])
    assert (aln.score, aln.target_begin, aln.cigar) == (97 * 4 - (8 + 2 * 2), 20, [(OP_M, 30), (OP_I, 3), (OP_M, 67)])


def test_cigar_runs_merge_as_single_bases() -> None:
    from genoserve.variants.realign_reads import _merge, _merge_run

    # Merging a run of one op at once equals merging its bases one by one, cancellations of an I
    # against a D (and the read-length cap) included.
    rng = np.random.default_rng(11)
    ops = [OP_M, OP_I, OP_D, OP_S]
    for _ in range(2000):
        read_len = int(rng.integers(5, 30))
        runs = [(int(rng.choice(ops)), int(rng.integers(1, 8))) for _ in range(int(rng.integers(1, 8)))]
        single: list[list[int]] = []
        batched: list[list[int]] = []
        for op, n in runs:
            for _ in range(n):
                _merge(op, 1, read_len, single)
            _merge_run(op, n, read_len, batched)
        assert batched == single, runs


def test_window_alleles_of_a_read_past_the_reference_end() -> None:
    from genoserve.variants.realign_windows import SUBSTITUTION, read_alleles

    # Bases beyond the reference given count against an N (substitutions), as before the
    # reference-base events were left out.
    ref = REF[:100]
    read = _read("edge", OFFSET + 90, REF[90:110], [(OP_M, 20)])
    alleles = read_alleles(read, ref, OFFSET)
    assert [(pos - OFFSET, kind) for pos, kind, _, _ in alleles] == [(i, SUBSTITUTION) for i in range(100, 110)]
    # An insertion anchored at a substitution replaces it.
    alt = REF[40:50] + ("A" if REF[50] != "A" else "C") + "GG" + REF[51:60]
    read = _read("ins", OFFSET + 40, alt, [(OP_M, 11), (OP_I, 2), (OP_M, 9)])
    alleles = read_alleles(read, REF, OFFSET)
    assert [(pos - OFFSET, length) for pos, _, length, _ in alleles] == [(50, 2)]


def test_graph_edges_are_k_plus_1_mers_in_first_seen_order() -> None:
    from genoserve.variants.realign_graph import _good_runs, _Graph

    read = _read("q", 0, "ACGTNACGTACGTT", [(OP_M, 14)])
    read.quals[11] = 10
    assert _good_runs(read, 15) == [(0, 4), (5, 11), (12, 14)]
    graph = _Graph.from_paths(3, "ACGTAC", [(read.seq, 5, 11)])
    # The reference path ACG->CGT->GTA->TAC; the read segment ACGTAC walks it again (weight 2).
    assert list(graph.edges) == ["ACG", "CGT", "GTA", "TAC"]
    assert graph.edges["ACG"] == {"CGT": [2, 1]}
    assert graph.edges["TAC"] == {}
