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
from genoserve.runtime.registry import read_model


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
    [record] = read_model(Path(__file__).resolve().parents[3] / "models" / "platform-mlp")
    with pytest.raises(InvalidArgument, match="would make 1001 shards"):
        kind.plan([tmp_path / "rows.npy"], kind.parse_params({"shard_size": "1"}), record, settings)
    with pytest.raises(InvalidArgument, match=r"params\[shard_size\]: shard_size 1000 would make 200 shards"):
        get_kind("variants.call_bam")._chunks(  # type: ignore[attr-defined]
            tmp_path / "x.bam", {"shard_size": "1000", "regions": "chr1:1-100000,chr2:1-100000"}, settings
        )


def test_call_bam_takes_realign_as_a_flag() -> None:
    """``realign`` (DeepVariant's local realignment, on by default) is a documented call_bam param."""
    job = get_kind("variants.call_bam")
    assert job.parse_params({})["realign"] == "true"
    assert job.parse_params({"realign": "FALSE"})["realign"] == "false"


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("word", ["yes", "no", "on", "", "2", "truthy"])
def test_overwrite_other_than_true_false_1_0_is_refused_not_read_as_false(kind: str, word: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        get_kind(kind).parse_params({"overwrite": word})
    [violation] = info.value.violations
    assert violation.field == "params[overwrite]"
    assert violation.description == f"must be true or false, got {word!r} (1 and 0 work too)"
    assert str(info.value) == f"params[overwrite]: {violation.description}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unknown_params_are_refused_naming_each_and_listing_the_known_ones(kind: str) -> None:
    job = get_kind(kind)
    with pytest.raises(InvalidArgument) as info:
        job.parse_params({"shard": "1", "colour": "blue", "overwrite": "true"})
    assert [v.field for v in info.value.violations] == ["params[shard]", "params[colour]"]
    known = ", ".join(sorted(job.defaults))
    assert info.value.violations[0].description == f"unknown parameter for {kind}; known: {known}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_params_are_normalized_to_strings_that_parse_to_themselves(kind: str) -> None:
    """The job record keeps the normalized strings, the service adds ``version`` to them, and
    workers parse them again: a fixed point."""
    job = get_kind(kind)
    parsed = job.parse_params({"overwrite": "1"})
    assert parsed == {**job.defaults, "overwrite": "true"}
    assert all(isinstance(value, str) for value in parsed.values())
    pinned = {**parsed, "version": "3"}
    assert job.parse_params(pinned) == pinned
    assert "shard_size" not in job.defaults or int(job.defaults["shard_size"]) > 0


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_param_is_documented(kind: str) -> None:
    described = get_kind(kind).params_model.describe()
    assert set(described) == set(get_kind(kind).defaults)
    undocumented = [name for name, text in described.items() if len(text) < 10]
    assert undocumented == []


@pytest.mark.parametrize("kind", sorted(k for k in KINDS if "shard_size" in KINDS[k].defaults))
@pytest.mark.parametrize("size", ["0", "-5", "abc", "1.5", "", "1e3"])
def test_shard_size_must_be_a_positive_whole_number(kind: str, size: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        get_kind(kind).parse_params({"shard_size": size})
    [violation] = info.value.violations
    assert violation.field == "params[shard_size]"
    rule = "an integer >= 1000 bp" if kind == "variants.call_bam" else "a positive integer"
    assert violation.description == f"must be {rule}, got {size!r}"
    assert get_kind(kind).parse_params({"shard_size": " 2000 "})["shard_size"] == "2000"


def test_call_bam_shard_size_is_at_least_1000_bp() -> None:
    job = get_kind("variants.call_bam")
    with pytest.raises(InvalidArgument, match=r"params\[shard_size\]: must be an integer >= 1000 bp, got '999'"):
        job.parse_params({"shard_size": "999"})
    assert job.typed({"shard_size": "1000"}).shard_size == 1000


@pytest.mark.parametrize(
    ("params", "field", "rule"),
    [
        ({"niter": "0"}, "params[niter]", "must be in 1..10000, got 0"),
        ({"niter": "ten"}, "params[niter]", "must be an integer, got 'ten'"),
        ({"diameter": "nan"}, "params[diameter]", "must be finite, got 'nan'"),
        ({"diameter": "big"}, "params[diameter]", "must be a number, got 'big'"),
        ({"flow_threshold": "-1"}, "params[flow_threshold]", "must be >= 0 (0 turns the check off), got -1.0"),
        ({"channels": "0,x"}, "params[channels]", "must be comma-separated integers, got '0,x'"),
        ({"pattern": "../*.tif"}, "params[pattern]", "'../*.tif': globs match file names inside the input folder"),
    ],
)
def test_segmentation_numbers_are_checked_at_submit_naming_the_param(params: dict[str, str], field: str,
                                                                      rule: str) -> None:  # fmt: skip
    with pytest.raises(InvalidArgument) as info:
        get_kind("segmentation.segment_images").parse_params(params)
    [violation] = info.value.violations
    assert violation.field == field
    assert violation.description.startswith(rule)


def test_typed_params_of_the_kinds() -> None:
    segment = get_kind("segmentation.segment_images").parse_params({"channels": "1, 0", "diameter": "30"})
    assert (segment["channels"], segment["diameter"], segment["model"]) == ("1,0", "30.0", "cellpose-nuclei")
    embed = get_kind("embedding.embed_h5ad").typed({"model": "scvi-pbmc"})
    assert embed.overlap == 0.8
    assert get_kind("embedding.embed_h5ad").parse_params({"min_gene_overlap": "0.5"})["min_gene_overlap"] == "0.5"
    with pytest.raises(InvalidArgument, match=r"params\[strand\]: must be forward, max or mean, got 'both'"):
        get_kind("binding.score_vcf").parse_params({"strand": "both"})
    with pytest.raises(InvalidArgument, match=r"params\[format\]: must be parquet or tsv, got 'csv'"):
        get_kind("binding.score_bed").parse_params({"format": "csv"})
    with pytest.raises(InvalidArgument, match=r"params\[version\]: must be a version number, got 'latest'"):
        get_kind("platform.score_rows").parse_params({"version": "latest"})


def test_embed_h5ad_checks_the_plot_colour_column_at_submit() -> None:
    """Not at the merge, after every shard has run."""
    repo = Path(__file__).resolve().parents[3]
    h5ad = repo / "tests" / "data" / "embedding" / "pbmc68k_reduced_counts_700x765.h5ad"
    kind = get_kind("embedding.embed_h5ad")
    [record] = read_model(repo / "models" / "scvi-pbmc")
    settings = Settings()
    params = kind.parse_params({"model": "scvi-pbmc", "plot": "true", "color_by": "nosuch"})
    with pytest.raises(InvalidArgument) as info:
        kind.plan([h5ad], params, record, settings)
    assert info.value.violations[0].field == "inputs[0]"
    assert info.value.message.startswith(f"inputs[0]: params[color_by]: {h5ad}: obs has no column 'nosuch'")
    good = kind.parse_params({"model": "scvi-pbmc", "plot": "true", "color_by": "louvain"})
    assert len(kind.plan([h5ad], good, record, settings)) == 1
