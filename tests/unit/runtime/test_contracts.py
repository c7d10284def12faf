"""Family contracts: a model.yaml that breaks its family's rules is kept out when the repository
reads it, with the rule in the reason; every rule has a case here."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from genoserve.binding.contract import BindingContract
from genoserve.core.errors import InvalidArgument
from genoserve.embedding.contract import EmbeddingContract
from genoserve.runtime.registry import ModelState, read_spec, scan
from genoserve.segmentation.contract import SegmentationContract
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


def kept_out_with(tmp_path: Path, spec: Spec) -> str:
    """Write ``spec`` as a model directory, scan it: every version FAILED with one reason."""
    (tmp_path / spec["name"]).mkdir()
    (tmp_path / spec["name"] / "model.yaml").write_text(yaml.safe_dump(spec))
    records = scan(tmp_path)
    assert records
    assert {r.state for r in records} == {ModelState.FAILED}
    [reason] = {r.reason for r in records}
    return reason


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
        lambda s: s["outputs"].append({**s["outputs"][0], "name": "other"}),
        "needs one input and one output (has 1 and 2)",
    ),
    # segmentation
    ("cellpose-nuclei", put(["preprocessing", "tile"], 250), "tile 250 is not a multiple of size_multiple 8"),
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
]


@pytest.mark.parametrize(("model", "edit", "rule"), CASES)
def test_a_broken_contract_is_kept_out_naming_the_rule(
    tmp_path: Path, model: str, edit: Callable[[Spec], None], rule: str
) -> None:
    spec = edited(model, edit)
    reason = kept_out_with(tmp_path, spec)
    assert reason.startswith(f"model.yaml breaks the {spec['family']} contract: ")
    assert rule in reason


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "models").iterdir() if p.is_dir()))
def test_every_bundled_model_keeps_its_contract(name: str) -> None:
    [record, *_] = scan(REPO / "models", (name,))
    assert record.state is not ModelState.FAILED, record.reason
    assert (record.contract is None) == (record.spec is not None and record.spec.family == "platform")


def test_a_contract_is_asked_of_its_own_family_only() -> None:
    spec = read_spec(REPO / "models" / "cellpose-nuclei")
    with pytest.raises(InvalidArgument, match="cellpose-nuclei is a segmentation model, not a binding model"):
        BindingContract.of(spec)
    with pytest.raises(InvalidArgument, match="cellpose-nuclei is a segmentation model, not an embedding model"):
        EmbeddingContract.of(spec)
    assert SegmentationContract.of(spec).percentiles == (1.0, 99.0)
