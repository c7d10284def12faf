"""Job params: every family job kind that needs a model refuses a submission without one (or
with an empty ``model`` param), naming the param, and kinds with a default model use it; a model
param is a plain model name, booleans are true/false/1/0, and a job has a bounded number of shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import Settings
from genoserve.jobs.kinds import KINDS, get_kind
from genoserve.jobs.kinds.base import shard_ranges
from genoserve.runtime.registry import read_spec


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


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_booleans_are_strict_and_stored_as_true_or_false(kind: str) -> None:
    job = get_kind(kind)
    for flag in sorted(job.flags):
        with pytest.raises(InvalidArgument) as info:
            job.parse_params({flag: "maybe"})
        [violation] = info.value.violations
        assert violation.field == f"params[{flag}]"
        assert "true or false" in violation.description
        assert job.parse_params({flag: "1"})[flag] == "true"
        assert job.parse_params({flag: "FALSE"})[flag] == "false"
    assert "overwrite" in job.flags


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("model", ["/etc", "../models/x", "models/x", "Upper", "-x", "x" * 200, "a\0b"])
def test_a_model_param_must_be_a_plain_model_name(kind: str, model: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        get_kind(kind).parse_params({"model": model})
    [violation] = info.value.violations
    assert violation.field == "params[model]"
    assert "must be a model name" in violation.description


def test_too_many_shards_are_refused_before_they_are_made(tmp_path: Path) -> None:
    settings = Settings.model_validate({"jobs": {"max_shards_per_job": 100}})
    assert len(shard_ranges(0, 1000, 10, 0, settings)) == 100
    with pytest.raises(InvalidArgument) as info:
        shard_ranges(1, 1000, 10, 1, settings)  # one shard of an earlier input already
    [violation] = info.value.violations
    assert violation.field == "params[shard_size]"
    assert violation.description == (
        "shard_size 10 would make 101 shards; a job may have at most 100 (setting jobs.max_shards_per_job): "
        "use a larger shard_size, e.g. 10 or more"
    )
    np.save(tmp_path / "rows.npy", np.zeros((1001, 128), np.float32))
    kind = get_kind("platform.score_rows")
    spec = read_spec(Path(__file__).resolve().parents[3] / "models" / "platform-mlp")
    with pytest.raises(InvalidArgument, match="would make 1001 shards"):
        kind.plan([tmp_path / "rows.npy"], kind.parse_params({"shard_size": "1"}), spec, settings)
    with pytest.raises(InvalidArgument, match=r"params\[shard_size\]: shard_size 1000 would make 200 shards"):
        get_kind("variants.call_bam")._chunks(  # type: ignore[attr-defined]
            tmp_path / "x.bam", {"shard_size": "1000", "regions": "chr1:1-100000,chr2:1-100000"}, settings
        )


def test_call_bam_takes_realign_as_a_flag() -> None:
    """``realign`` (DeepVariant's local realignment, on by default) is a documented call_bam param."""
    job = get_kind("variants.call_bam")
    assert job.parse_params({})["realign"] == "true"
    assert job.parse_params({"realign": "FALSE"})["realign"] == "false"
