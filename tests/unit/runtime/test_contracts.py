"""Family contracts: a model.yaml that breaks its family's rules is kept out when the repository
reads it and refused by ``genoserve models validate``, with the rule in the reason; every rule has
a case here (and a line in docs/contracts.md)."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from genoserve.binding.contract import BindingContract
from genoserve.cli.main import cli
from genoserve.core.errors import InvalidArgument, Unavailable
from genoserve.embedding.contract import EmbeddingContract
from genoserve.runtime.contracts import PlatformPreprocessing, parse_preprocessing
from genoserve.runtime.registry import ModelState, read_spec, scan
from genoserve.segmentation.contract import SegmentationContract, SegmentationPreprocessing
from genoserve.variants.contract import VariantsContract
from tests.support.server import REPO

Spec = dict[str, Any]


def bundled(name: str) -> Spec:
    spec: Spec = yaml.safe_load((REPO / "models" / name / "model.yaml").read_text())
    return spec


def edited(name: str, edit: Callable[[Spec], None]) -> Spec:
    spec = copy.deepcopy(bundled(name))
    edit(spec)
    return spec


def put(path: list[str | int], value: Any) -> Callable[[Spec], None]:
    def edit(spec: Spec) -> None:
        target: Any = spec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def written(tmp_path: Path, spec: Spec) -> Path:
    """``spec`` as the one model directory of a repository (its model.yaml only)."""
    (tmp_path / spec["name"]).mkdir()
    (tmp_path / spec["name"] / "model.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path


def kept_out_with(tmp_path: Path, spec: Spec) -> str:
    """Write ``spec`` as a model directory, scan it: every version FAILED with one reason."""
    records = scan(written(tmp_path, spec))
    assert records
    assert {r.state for r in records} == {ModelState.FAILED}
    [reason] = {r.reason for r in records}
    return reason


def refused_by_validate(tmp_path: Path, spec: Spec) -> str:
    """``genoserve models validate`` on a repository holding ``spec``: exit 1, every version
    FAILED with one reason."""
    quiet = logging.getLogger("genoserve").level
    try:
        result = CliRunner().invoke(cli, ["models", "validate", str(written(tmp_path, spec))])
    finally:
        logging.getLogger("genoserve").setLevel(quiet)  # the command quiets the loader's log
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines
    prefix = re.compile(rf"{re.escape(spec['name'])} version \d+: FAILED: ")
    assert all(prefix.match(line) for line in lines), lines
    [reason] = {prefix.sub("", line) for line in lines}
    return reason


CHECKS = {"load": kept_out_with, "validate": refused_by_validate}


CASES = [
    # binding
    (
        "deepbind-ctcf",
        put(["preprocessing", "default_strand"], "both"),
        "preprocessing.default_strand: Input should be 'forward', 'max' or 'mean'",
    ),
    (
        "deepbind-ctcf",
        put(["preprocessing", "strand_default"], "max"),
        "preprocessing.strand_default: Extra inputs are not permitted",
    ),
    (
        "deepbind-ctcf",
        put(["preprocessing", "sequence_length"], 100),
        "preprocessing.sequence_length 100 is not the input's length 101",
    ),
    ("deepbind-ctcf", put(["preprocessing", "alphabet"], "ACGU"), "preprocessing.alphabet: Input should be 'ACGT'"),
    ("deepbind-ctcf", put(["preprocessing", "unknown"], "X"), "preprocessing.unknown: Input should be 'N'"),
    (
        "deepbind-ctcf",
        put(["preprocessing", "metric_floors"], {"auroc": "high"}),
        "preprocessing.metric_floors.auroc: Input should be a valid number",
    ),
    (
        "deepbind-ctcf",
        put(["preprocessing", "family"], "binding"),
        "preprocessing.family: Extra inputs are not permitted",
    ),
    ("deepbind-ctcf", put(["inputs", 0, "shape"], [-1, 101, 5]), "input x must be float32 [batch, length, 4]"),
    (
        "deepbind-ctcf",
        put(["inputs", 0, "shape"], [-1, -1, 4]),
        "input x must be float32 [batch, length, 4] with a fixed length",
    ),
    ("deepbind-ctcf", put(["inputs", 0, "dtype"], "float16"), "input x must be float32"),
    ("deepbind-ctcf", put(["outputs", 0, "shape"], [-1, 1, 1]), "output logit must be float32 [batch, tasks]"),
    (
        "deepbind-ctcf",
        put(["outputs", 0, "shape"], [-1, -1]),
        "output logit must be float32 [batch, tasks] with a fixed task count",
    ),
    ("deepbind-ctcf", put(["outputs", 0, "dtype"], "float16"), "output logit must be float32 [batch, tasks]"),
    (
        "deepbind-ctcf",
        lambda s: s["outputs"].append({**s["outputs"][0], "name": "other"}),
        "needs one input and one output (has 1 and 2)",
    ),
    # segmentation
    ("cellpose-nuclei", put(["preprocessing", "tile"], 250), "tile 250 is not a multiple of size_multiple 8"),
    (
        "cellpose-nuclei",
        put(["preprocessing", "tile"], 0),
        "preprocessing.tile: Input should be greater than or equal to 8",
    ),
    (
        "cellpose-nuclei",
        put(["preprocessing", "size_multiple"], 0),
        "preprocessing.size_multiple: Input should be greater than or equal to 1",
    ),
    (
        "cellpose-nuclei",
        put(["preprocessing", "pad"], -1),
        "preprocessing.pad: Input should be greater than or equal to 0",
    ),
    (
        "cellpose-nuclei",
        put(["preprocessing", "tile_overlap"], -0.1),
        "preprocessing.tile_overlap: Input should be greater than or equal to 0",
    ),
    (
        "cellpose-nuclei",
        put(["preprocessing", "tile_overlap"], 0.5),
        "preprocessing.tile_overlap: Input should be less than 0.5",
    ),
    (
        "cellpose-nuclei",
        put(["preprocessing", "diameter"], 0),
        "preprocessing.diameter: Input should be greater than 0",
    ),
    (
        "cellpose-nuclei",
        put(["preprocessing", "normalize_percentiles"], [99, 1]),
        "normalize_percentiles must be 0 <= lower < upper <= 100",
    ),
    (
        "cellpose-nuclei",
        put(["preprocessing", "channels"], [0, 0]),
        "preprocessing.channels: Extra inputs are not permitted",
    ),
    (
        "cellpose-nuclei",
        lambda s: s["inputs"][0].update(shape=[-1, 1, -1], warmup_shape=None),
        "input image must be float32 [batch, channels, H, W]",
    ),
    (
        "cellpose-nuclei",
        put(["inputs", 0, "shape"], [-1, -1, -1, -1]),
        "input image must be float32 [batch, channels, H, W] with a fixed channel count",
    ),
    ("cellpose-nuclei", put(["inputs", 0, "dtype"], "uint8"), "input image must be float32 [batch, channels, H, W]"),
    (
        "cellpose-nuclei",
        put(["outputs", 0, "shape"], [-1, 2, -1, -1]),
        "output flows_cellprob must be float32 [batch, 3, H, W]",
    ),
    (
        "cellpose-nuclei",
        lambda s: s["inputs"].append({**s["inputs"][0], "name": "mask"}),
        "needs one input and one output (has 2 and 1)",
    ),
    # embedding
    ("scvi-pbmc", lambda s: s["inputs"][0].pop("labels"), "input counts has 765 columns but 0 gene labels"),
    (
        "scvi-pbmc",
        put(["inputs", 0, "labels", 1], bundled("scvi-pbmc")["inputs"][0]["labels"][0]),
        "input counts's gene labels are not unique",
    ),
    ("scvi-pbmc", put(["inputs", 0, "name"], "x"), "needs ['counts']"),
    ("scvi-pbmc", lambda s: s["outputs"].pop(), "needs ['latent_var']"),
    (
        "scvi-pbmc",
        put(["outputs", 1, "shape"], [-1, 9]),
        "outputs latent_mean [-1, 10] and latent_var [-1, 9] differ in shape",
    ),
    ("scvi-pbmc", put(["preprocessing", "n_latent"], 12), "preprocessing.n_latent 12 is not the outputs' size 10"),
    (
        "scvi-pbmc",
        put(["preprocessing", "encode_covariates"], True),
        "preprocessing.encode_covariates is True but the model has no 'batch' input",
    ),
    (
        "scvi-pbmc",
        put(["preprocessing", "encode_covariates"], "yes"),
        "preprocessing.encode_covariates: Input should be a valid boolean",
    ),
    (
        "scvi-pbmc",
        put(["preprocessing", "likelihood"], "gaussian"),
        "preprocessing.likelihood: Input should be 'zinb', 'nb' or 'poisson'",
    ),
    (
        "scvi-pbmc",
        lambda s: s["inputs"].append({**s["inputs"][0], "name": "size_factor", "labels": []}),
        "unknown: ['size_factor']",
    ),
    ("scvi-sim-batch", lambda s: s["inputs"][1].pop("labels"), "input batch has 3 columns but 0 batch category labels"),
    (
        "scvi-sim-batch",
        put(["inputs", 1, "labels", 1], bundled("scvi-sim-batch")["inputs"][1]["labels"][0]),
        "input batch's batch category labels are not unique",
    ),
    (
        "scvi-sim-batch",
        put(["preprocessing", "encode_covariates"], False),
        "preprocessing.encode_covariates is False but the model has 'batch' input",
    ),
    (
        "scvi-sim-batch",
        put(["inputs", 1, "dtype"], "int64"),
        "input batch must be float32 [batch, n] with a fixed n, is int64 [-1, 3]",
    ),
    (
        "scvi-pbmc",
        put(["inputs", 0, "dtype"], "float64"),
        "input counts must be float32 [batch, n] with a fixed n, is float64 [-1, 765]",
    ),
    (
        "scvi-pbmc",
        lambda s: s["inputs"][0].update(shape=[-1, -1], labels=[]),
        "input counts must be float32 [batch, n] with a fixed n, is float32 [-1, -1]",
    ),
    (
        "scvi-pbmc",
        lambda s: s["outputs"][0].update(shape=[-1, 10, 1]),
        "output latent_mean must be float32 [batch, n] with a fixed n, is float32 [-1, 10, 1]",
    ),
    (
        "scvi-pbmc",
        lambda s: s["outputs"][1].update(dtype="float16"),
        "output latent_var must be float32 [batch, n] with a fixed n, is float16 [-1, 10]",
    ),
    (
        "scvi-pbmc",
        put(["preprocessing", "architecture"], "totalvi"),
        "preprocessing.architecture: Input should be 'scvi'",
    ),
    ("scvi-pbmc", put(["preprocessing", "n_hidden"], 0), "preprocessing.n_hidden: Input should be greater than 0"),
    ("scvi-pbmc", put(["preprocessing", "n_latent"], 0), "preprocessing.n_latent: Input should be greater than 0"),
    ("scvi-pbmc", put(["preprocessing", "batch_key"], 3), "preprocessing.batch_key: Input should be a valid string"),
    # variants
    ("deepvariant-cnn-7ch", put(["preprocessing", "height"], 99), "preprocessing.height: Input should be 100"),
    ("deepvariant-cnn-7ch", put(["preprocessing", "width"], 220), "preprocessing.width: Input should be 221"),
    ("deepvariant-cnn-7ch", put(["preprocessing", "layout"], "NCHW"), "preprocessing.layout: Input should be 'NHWC'"),
    (
        "deepvariant-cnn-7ch",
        lambda s: s["preprocessing"].update(channels=s["preprocessing"]["channels"][:6]),
        "preprocessing.channels ['read_base', 'base_quality', 'mapping_quality', 'strand', "
        "'read_supports_variant', 'base_differs_from_ref'] are not DeepVariant's 7 channels",
    ),
    (
        "deepvariant-cnn-7ch",
        put(["preprocessing", "channel"], []),
        "preprocessing.channel: Extra inputs are not permitted",
    ),
    (
        "deepvariant-cnn-7ch",
        put(["inputs", 0, "shape"], [-1, 221, 100, 7]),
        "input pileup must be uint8 [batch, 100, 221, 6 or 7] (NHWC pileups), is uint8 [-1, 221, 100, 7]",
    ),
    (
        "deepvariant-cnn-7ch",
        put(["inputs", 0, "shape"], [-1, 100, 221, 5]),
        "input pileup must be uint8 [batch, 100, 221, 6 or 7] (NHWC pileups), is uint8 [-1, 100, 221, 5]",
    ),
    (
        "deepvariant-cnn-7ch",
        put(["inputs", 0, "dtype"], "float32"),
        "input pileup must be uint8 [batch, 100, 221, 6 or 7] (NHWC pileups), is float32",
    ),
    (
        "deepvariant-cnn-7ch",
        lambda s: s["outputs"][0].update(shape=[-1, 4], labels=[]),
        "output probabilities must be float32 [batch, 3] (genotype probabilities), is float32 [-1, 4]",
    ),
    (
        "deepvariant-cnn-7ch",
        put(["outputs", 0, "labels"], ["het", "hom_ref", "hom_alt"]),
        "output probabilities labels must be ['hom_ref', 'het', 'hom_alt'] in that order",
    ),
    (
        "deepvariant-cnn-7ch",
        lambda s: s["outputs"].append({**s["outputs"][0], "name": "logits"}),
        "needs one input and one output (has 1 and 2)",
    ),
    # platform: the generic family has no preprocessing keys
    (
        "platform-mlp",
        lambda s: s.update(preprocessing={"normalise": "zscore"}),
        "preprocessing.normalise: Extra inputs are not permitted",
    ),
]


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize(("model", "edit", "rule"), CASES)
def test_a_broken_contract_is_kept_out_naming_the_rule(
    tmp_path: Path, model: str, edit: Callable[[Spec], None], rule: str, check: str
) -> None:
    """At load (the registry's scan) and by ``genoserve models validate``, with the same reason."""
    spec = edited(model, edit)
    reason = CHECKS[check](tmp_path, spec)
    assert reason.startswith(f"model.yaml breaks the {spec['family']} contract: ")
    assert rule in reason


def _documented(family: str) -> str:
    """docs/contracts.md's section of ``family``."""
    text = (REPO / "docs" / "contracts.md").read_text()
    return text.split(f"\n## {family}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize(("model", "rule"), sorted({(model, rule) for model, _, rule in CASES}))
def test_every_tested_preprocessing_rule_is_documented(model: str, rule: str) -> None:
    """Each key a case breaks is in its family's section of docs/contracts.md (or its rule for
    unknown keys is, in the intro)."""
    family = bundled(model)["family"]
    key = re.match(r"preprocessing\.(\w+)", rule)
    if key is None or "Extra inputs are not permitted" in rule:
        return
    assert f"`{key[1]}`" in _documented(family), f"{key[1]} is not in the {family} section of docs/contracts.md"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "models").iterdir() if p.is_dir()))
def test_every_bundled_model_keeps_its_contract(name: str) -> None:
    [record, *_] = scan(REPO / "models", (name,))
    assert record.state is not ModelState.FAILED, record.reason
    assert (record.contract is None) == (record.spec is not None and record.spec.family == "platform")


def test_the_preprocessing_block_is_one_union_on_family() -> None:
    """One TypeAdapter parses model.yaml's family with its preprocessing block: the member is the
    family's own (platform's has no keys)."""
    assert isinstance(parse_preprocessing(read_spec(REPO / "models" / "platform-mlp")), PlatformPreprocessing)
    parsed = parse_preprocessing(read_spec(REPO / "models" / "cellpose-nuclei"))
    assert isinstance(parsed, SegmentationPreprocessing)
    assert (parsed.family, parsed.tile, parsed.pad) == ("segmentation", 256, 0)


async def test_models_list_shows_a_contract_violation_as_the_reason(tmp_path: Path) -> None:
    """What Models/List (``genoserve models list``) returns for a model that breaks its contract:
    FAILED, the violation as the reason, never served; the repository's other models still load."""
    from genoserve.api.codecs.models import model_info
    from genoserve.core.settings import RuntimeSettings
    from genoserve.runtime.live import LiveModels
    from tests.support.models import linear_onnx, linear_spec, write_model

    write_model(tmp_path, linear_spec("good"), {1: linear_onnx(seed=1)})
    write_model(tmp_path, linear_spec("typo", preprocessing={"normalise": "zscore"}), {1: linear_onnx(seed=1)})
    repository = LiveModels(RuntimeSettings(model_dir=tmp_path))
    await repository.load()
    try:
        infos = {s.name: model_info(s) for s in repository.statuses()}
        assert infos["good"].ready
        assert not infos["typo"].ready
        assert infos["typo"].reason == (
            "model.yaml breaks the platform contract: preprocessing.normalise: Extra inputs are not permitted"
        )
        with pytest.raises(
            Unavailable, match=r"model typo has no ready version \(version 1: failed model\.yaml breaks"
        ):
            repository.get("typo")
    finally:
        await repository.close(1)


def test_a_contract_is_asked_of_its_own_family_only() -> None:
    spec = read_spec(REPO / "models" / "cellpose-nuclei")
    with pytest.raises(InvalidArgument, match="cellpose-nuclei is a segmentation model, not a binding model"):
        BindingContract.of(spec)
    with pytest.raises(InvalidArgument, match="cellpose-nuclei is a segmentation model, not an embedding model"):
        EmbeddingContract.of(spec)
    assert SegmentationContract.of(spec).percentiles == (1.0, 99.0)
    with pytest.raises(InvalidArgument, match="cellpose-nuclei is a segmentation model, not a variants model"):
        VariantsContract.of(spec)
