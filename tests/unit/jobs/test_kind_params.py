"""Every family job kind that needs a model refuses a submission without one (or with an empty
``model`` param), naming the param; kinds with a default model use it."""

from __future__ import annotations

import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.jobs.kinds import get_kind


@pytest.mark.parametrize(
    ("kind", "example"),
    [
        ("binding.score_fasta", "deepbind-ctcf"),
        ("binding.score_bed", "deepbind-ctcf"),
        ("binding.score_vcf", "deepbind-ctcf"),
        ("segmentation.segment_images", "segmentation model"),
        ("embedding.embed_h5ad", "scvi-pbmc"),
    ],
)
def test_a_missing_model_is_refused_naming_the_param(kind: str, example: str) -> None:
    job = get_kind(kind)
    with pytest.raises(InvalidArgument) as info:
        job.model(job.parse_params({"model": ""}))
    [violation] = info.value.violations
    assert violation.field == "params[model]"
    assert "is required" in violation.description
    assert example in violation.description
    assert job.model(job.parse_params({"model": "m", "version": "2"})) == ("m", "2")


@pytest.mark.parametrize(
    ("kind", "default"),
    [
        ("variants.call_bam", "deepvariant-cnn-7ch"),
        ("variants.call_examples", "deepvariant-cnn-7ch"),
        ("segmentation.segment_images", "cellpose-nuclei"),
    ],
)
def test_kinds_with_a_default_model_use_it(kind: str, default: str) -> None:
    job = get_kind(kind)
    assert job.model(job.parse_params({})) == (default, "")
