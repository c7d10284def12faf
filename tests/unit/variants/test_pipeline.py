"""The calling pipeline shared by the server, the jobs and the CLI: sites called once all their
examples are in, however the examples are split, in the order DeepVariant's postprocess gives; and
VCFs ordered by the header's contigs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pysam
import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.variants.examples import PileupExample, read_examples
from genoserve.variants.pipeline import SiteCaller, call_examples, to_example_calls, write_calls
from genoserve.variants.postprocess import postprocess
from tests.support.variants_models import fraction_reference

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "deepvariant" / "golden.calling_examples.tfrecord.gz"


@pytest.fixture(scope="module")
def golden() -> list[PileupExample]:
    return list(read_examples(GOLDEN))


def _probabilities(n: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(7).dirichlet([1.0, 1.0, 1.0], size=n).astype(np.float32)


def test_sites_split_over_batches_are_called_as_postprocess_calls_them(golden: list[PileupExample]) -> None:
    probabilities = _probabilities(len(golden))
    want = postprocess(to_example_calls(golden, probabilities))
    caller = SiteCaller()
    calls, ids = [], []
    for start in range(0, len(golden), 10):  # the multi-allelic sites' examples straddle batches
        batch = to_example_calls(golden[start : start + 10], probabilities[start : start + 10])
        called = caller.add([str(start + i) for i in range(len(batch))], batch)
        assert called.errors == []
        calls += [call for call, _ in called.calls]
        ids += [example_ids for _, example_ids in called.calls]
    assert caller.unfinished() == []
    assert calls == want
    assert sorted(i for example_ids in ids for i in example_ids) == sorted(str(i) for i in range(len(golden)))
    assert max(len(example_ids) for example_ids in ids) == 3  # one example per alt and per alt pair


def test_call_examples_matches_postprocess_and_refuses_an_incomplete_site(golden: list[PileupExample]) -> None:
    probabilities = fraction_reference(np.stack([e.image for e in golden]))
    assert call_examples(golden, fraction_reference) == postprocess(to_example_calls(golden, probabilities))
    tri = next(i for i, e in enumerate(golden) if len(e.alternate_bases) == 2)
    with pytest.raises(InvalidArgument, match="incomplete, has examples"):
        call_examples(golden[:tri] + golden[tri + 1 :], fraction_reference)


def test_one_refused_example_leaves_the_other_sites_called(golden: list[PileupExample]) -> None:
    examples = to_example_calls(golden[:3], _probabilities(3))
    examples[1] = replace(examples[1], alt_allele_indices=(5,))
    called = SiteCaller().add(["a", "b", "c"], examples)
    assert [ids for _, ids in called.calls] == [["a"], ["c"]]
    assert [e.field for e in called.errors] == ["examples[b]"]


def test_write_calls_orders_by_the_header_contigs_and_lists_unknown_ones(
    golden: list[PileupExample], tmp_path: Path
) -> None:
    calls = postprocess(to_example_calls(golden[:4], _probabilities(4)))
    other = [replace(c, reference_name="chrZ") for c in calls[:2]]
    path = write_calls(tmp_path / "calls.vcf.gz", [*other, *reversed(calls)], [("chr20", 63025520)], "S")
    with pysam.VariantFile(str(path)) as vcf:
        assert [(c.name, c.length) for c in vcf.header.contigs.values()] == [("chr20", 63025520), ("chrZ", None)]
        records = [(r.contig, r.start) for r in vcf]
    assert records == [("chr20", c.start) for c in calls] + [("chrZ", c.start) for c in other]
    assert Path(f"{path}.tbi").exists()
