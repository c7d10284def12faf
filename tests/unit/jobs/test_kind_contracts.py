"""Job kinds take the family contract the registry parsed: ``plan`` from the record of the version
the job is pinned to, ``run_shard`` from the loaded model (``ShardContext.contract``); nothing in
the jobs or the servicers parses a contract again."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from genoserve.binding.contract import BindingContract
from genoserve.core.errors import InvalidArgument, ModelLoadError
from genoserve.core.settings import Settings
from genoserve.jobs.kinds import get_kind
from genoserve.jobs.kinds.base import ShardContext
from genoserve.runtime import contracts
from genoserve.runtime.registry import ModelState, ModelVersionRecord, read_model
from genoserve.runtime.spec import ModelSpec
from tests.support.server import REPO

MODELS = REPO / "models"
SETTINGS = Settings()
Array = np.ndarray[Any, Any]


#: Read (and their contracts parsed) by the registry before any test refuses parsing.
RECORDS = {
    name: read_model(MODELS / name)[0] for name in ("deepbind-ctcf", "cellpose-nuclei", "scvi-pbmc", "platform-mlp")
}


def record(name: str) -> ModelVersionRecord:
    return RECORDS[name]


@pytest.fixture
def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any contract parsed while the test runs fails it (the registry read the records before)."""

    def refuse(spec: ModelSpec) -> Any:
        raise AssertionError(f"the contract of {spec.name} was parsed again")

    monkeypatch.setattr(contracts, "parse_preprocessing", refuse)


def test_score_fasta_plans_and_runs_with_the_registrys_contract(tmp_path: Path, no_parsing: None) -> None:
    """A contract unlike the model.yaml's (6 bp, one task ``t1``, ports ``seq`` / ``out``) shows
    that the kind uses the object it was given, not one it parsed itself."""
    fasta = tmp_path / "a.fa"
    fasta.write_text(">one\nACGTAC\n>two\nNNACGT\n")
    model = copy.copy(record("deepbind-ctcf"))
    model.contract = BindingContract(length=6, tasks=["t1"], default_strand="forward", input="seq", output="out")
    kind = get_kind("binding.score_fasta")
    params = kind.parse_params({"model": "deepbind-ctcf"})
    [shard] = kind.plan([fasta], params, model, SETTINGS)
    seen: list[tuple[int, ...]] = []

    def infer(inputs: Mapping[str, Array], log1p_applied: Any = ()) -> dict[str, Array]:
        seen.append(inputs["seq"].shape)
        return {"out": np.zeros((len(inputs["seq"]), 1), np.float32)}

    assert model.spec is not None
    ctx = ShardContext(
        inputs=[fasta], input_index=0, start=shard.start, stop=shard.stop, offset=shard.offset, params=params,
        spec=model.spec, settings=SETTINGS, output_stem=tmp_path / "shard", infer=infer, batch_size=8,
        check=lambda: None, contract=model.contract,
    )  # fmt: skip
    assert kind.run_shard(ctx) == 2
    assert seen == [(2, 6, 4)]  # forward only: the contract's default strand, its length
    table = pq.read_table(kind.shard_result(ctx.output_stem))
    assert table.column_names == ["id", "t1_score", "t1_logit"]


@pytest.mark.parametrize(
    ("kind", "family"),
    [
        ("binding.score_fasta", "binding"),
        ("binding.score_bed", "binding"),
        ("binding.score_vcf", "binding"),
        ("segmentation.segment_images", "segmentation"),
        ("embedding.embed_h5ad", "embedding"),
    ],
)
def test_plan_refuses_a_model_of_another_family_or_one_kept_out(
    tmp_path: Path, kind: str, family: str, no_parsing: None
) -> None:
    """As before the contract came from the record: INVALID_ARGUMENT (field ``model``) for another
    family, FAILED_PRECONDITION with the registry's reason for a model that breaks its contract;
    both before any input is opened."""
    job = get_kind(kind)
    params = job.parse_params({"model": "x"})
    with pytest.raises(InvalidArgument, match=rf"platform-mlp is a platform model, not an? {family} model") as info:
        job.plan([tmp_path / "missing"], params, record("platform-mlp"), SETTINGS)
    assert info.value.violations[0].field == "model"
    own = {"binding": "deepbind-ctcf", "segmentation": "cellpose-nuclei", "embedding": "scvi-pbmc"}[family]
    broken = copy.copy(record(own))
    broken.contract = None
    broken.fail(f"model.yaml breaks the {family} contract: preprocessing.x: Extra inputs are not permitted")
    assert broken.state is ModelState.FAILED
    with pytest.raises(ModelLoadError, match=re.escape(broken.reason)) as failed:
        job.plan([tmp_path / "missing"], params, broken, SETTINGS)
    assert failed.value.code == "FAILED_PRECONDITION"


def test_run_shard_refuses_a_model_of_another_family(tmp_path: Path) -> None:
    model = record("cellpose-nuclei")
    assert model.spec is not None
    ctx = ShardContext(
        inputs=[tmp_path / "a.fa"], input_index=0, start=0, stop=1, offset=0, params={}, spec=model.spec,
        settings=SETTINGS, output_stem=tmp_path / "shard", infer=lambda inputs, log1p_applied=(): {}, batch_size=1,
        check=lambda: None, contract=model.contract,
    )  # fmt: skip
    with pytest.raises(InvalidArgument, match="cellpose-nuclei is a segmentation model, not a binding model"):
        ctx.contract_as(BindingContract)


@pytest.mark.parametrize("folder", ["jobs", "api"])
def test_no_contract_is_parsed_outside_the_registry(folder: str) -> None:
    """The family contracts' parse entry points (``<Family>Contract.of``, ``contract_of``,
    ``parse_preprocessing``) are called by none of the request or job paths."""
    parse = re.compile(r"\b(\w+Contract\.of|contract_of|parse_preprocessing|family_contract)\(")
    calls = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "services" / "genoserve" / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if parse.search(line)
    ]
    assert calls == []
