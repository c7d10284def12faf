"""platform.score_rows: planning, bad records named by file and row, order-preserving merge."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import Settings
from genoserve.jobs.kinds import get_kind
from genoserve.jobs.kinds.base import InputRecordError, ShardContext
from genoserve.runtime.registry import ModelVersionRecord, read_model

MODELS = Path(__file__).resolve().parents[3] / "models"
KIND = get_kind("platform.score_rows")
[RECORD] = read_model(MODELS / "platform-mlp")
assert RECORD.spec is not None
SPEC = RECORD.spec
SETTINGS = Settings()


def fake_model(inputs: Any) -> dict[str, npt.NDArray[Any]]:
    """Row sums in column 0 and the row's first value in column 1: order is checkable."""
    x = inputs["x"]
    return {"y": np.stack([x.sum(axis=1), x[:, 0]], axis=1).astype(np.float32)}


def run_all(inputs: list[Path], out: Path, params: dict[str, str]) -> list[Path]:
    parsed = KIND.parse_params(params)
    planned = KIND.plan(inputs, parsed, RECORD, SETTINGS)
    results = []
    for i, shard in enumerate(planned):
        stem = out / f"shard-{i:06d}"
        ctx = ShardContext(
            inputs=inputs, input_index=shard.input_index, start=shard.start, stop=shard.stop, offset=shard.offset,
            params=parsed, spec=SPEC, settings=SETTINGS, output_stem=stem, infer=fake_model, batch_size=7,
            check=lambda: None,
        )  # fmt: skip
        assert KIND.run_shard(ctx) == shard.items
        results.append((shard, KIND.shard_result(stem)))
    return KIND.merge(inputs, results, out, parsed, [out])


def rows(n: int, start: int = 0) -> npt.NDArray[Any]:
    x = np.zeros((n, 128), np.float32)
    x[:, 0] = np.arange(start, start + n)
    return x


def test_plan_splits_each_input_into_shards(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", rows(25))
    np.save(tmp_path / "b.npy", rows(10))
    planned = KIND.plan(
        [tmp_path / "a.npy", tmp_path / "b.npy"], KIND.parse_params({"shard_size": "10"}), RECORD, SETTINGS
    )
    assert [(s.input_index, s.start, s.stop) for s in planned] == [(0, 0, 10), (0, 10, 20), (0, 20, 25), (1, 0, 10)]


def test_npy_and_parquet_outputs_keep_input_order(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", rows(53))
    table = pa.Table.from_arrays([pa.array(c) for c in rows(41, 1000).T], names=[f"f{i}" for i in range(128)])
    pq.write_table(table, tmp_path / "b.parquet", row_group_size=6)
    out = tmp_path / "out"
    out.mkdir()
    finals = run_all([tmp_path / "a.npy", tmp_path / "b.parquet"], out, {"shard_size": "10"})
    assert finals == [out / "a.scores.npy", out / "b.scores.parquet"]
    np.testing.assert_array_equal(np.load(finals[0])[:, 1], np.arange(53))
    merged = pq.read_table(finals[1])
    assert merged.column("row").to_pylist() == list(range(41))
    np.testing.assert_array_equal(merged.column("y1").to_numpy(), np.arange(1000, 1041))


def test_non_finite_record_names_file_and_row(tmp_path: Path) -> None:
    x = rows(30)
    x[17, 5] = np.nan
    np.save(tmp_path / "a.npy", x)
    with pytest.raises(InputRecordError) as info:
        run_all([tmp_path / "a.npy"], tmp_path, {"shard_size": "10"})
    assert info.value.message == f"{tmp_path / 'a.npy'}: record 17: non-finite value in column 5"


def test_unusable_inputs_and_params_are_refused_at_plan_time(tmp_path: Path) -> None:
    np.save(tmp_path / "narrow.npy", np.zeros((4, 100), np.float32))
    (tmp_path / "notes.txt").write_text("hi")
    params = KIND.parse_params({})
    with pytest.raises(InvalidArgument, match="has 100 columns, model platform-mlp takes 128"):
        KIND.plan([tmp_path / "narrow.npy"], params, RECORD, SETTINGS)
    with pytest.raises(InvalidArgument, match=r"must be a \.npy or \.parquet file"):
        KIND.plan([tmp_path / "notes.txt"], params, RECORD, SETTINGS)
    with pytest.raises(InvalidArgument, match="positive integer"):
        KIND.plan([tmp_path / "narrow.npy"], KIND.parse_params({"shard_size": "0"}), RECORD, SETTINGS)
    with pytest.raises(InvalidArgument, match=r"params\[colour\]"):
        KIND.parse_params({"colour": "blue"})
    with pytest.raises(InvalidArgument, match="unknown job kind"):
        get_kind("binding.nope")


def test_worker_session_calls_use_the_worker_batch_not_the_online_bound() -> None:
    from genoserve.core.settings import RuntimeSettings
    from genoserve.jobs.local_models import LocalModels

    models = Path(__file__).resolve().parents[3] / "models"
    online = LocalModels(RuntimeSettings(model_dir=models)).get("platform-mlp")
    bulk = LocalModels(RuntimeSettings(model_dir=models), batch_size=1024).get("platform-mlp")
    assert online.max_batch_size == 256  # the model.yaml's online batching bound
    assert bulk.max_batch_size == 1024
    x = np.random.default_rng(0).normal(size=(1500, 128)).astype(np.float32)
    np.testing.assert_allclose(bulk.infer_sync({"x": x})["y"], online.infer_sync({"x": x})["y"], rtol=1e-5, atol=1e-5)


def renamed(inputs: str, outputs: str, n_outputs: int = 1) -> ModelVersionRecord:
    """platform-mlp's record with its ports named as a user's own model might name them."""
    [x], [y] = SPEC.inputs, SPEC.outputs
    spec = SPEC.model_copy(
        update={
            "inputs": (x.model_copy(update={"name": inputs}),),
            "outputs": tuple(y.model_copy(update={"name": f"{outputs}{i or ''}"}) for i in range(n_outputs)),
        }
    )
    return dataclasses.replace(RECORD, spec=spec)


def test_the_model_s_own_port_names_are_used(tmp_path: Path) -> None:
    record = renamed("features", "scores")
    assert record.spec is not None
    np.save(tmp_path / "a.npy", rows(12))
    parsed = KIND.parse_params({"shard_size": "5"})
    [first, *_] = KIND.plan([tmp_path / "a.npy"], parsed, record, SETTINGS)
    seen: list[str] = []

    def model(inputs: Any) -> dict[str, npt.NDArray[Any]]:
        seen.extend(inputs)
        return {"scores": fake_model({"x": inputs["features"]})["y"]}

    ctx = ShardContext(
        inputs=[tmp_path / "a.npy"], input_index=0, start=first.start, stop=first.stop, offset=first.offset,
        params=parsed, spec=record.spec, settings=SETTINGS, output_stem=tmp_path / "s0", infer=model,
        batch_size=4, check=lambda: None,
    )  # fmt: skip
    assert KIND.run_shard(ctx) == 5
    assert set(seen) == {"features"}
    np.testing.assert_array_equal(np.load(KIND.shard_result(tmp_path / "s0"))[:, 1], np.arange(5))


def test_a_model_with_two_outputs_is_refused_at_plan_time(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", rows(3))
    with pytest.raises(InvalidArgument, match="does not give one 2-D output"):
        KIND.plan([tmp_path / "a.npy"], KIND.parse_params({}), renamed("x", "y", n_outputs=2), SETTINGS)
