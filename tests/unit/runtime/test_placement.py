"""Session calls at once and threads per call: operator settings, model.yaml ``cpu_serving``, CPU quota."""

from __future__ import annotations

from pathlib import Path

import pytest

from genoserve.core.cpus import CpuBudget
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.batcher import BatcherConfig
from genoserve.runtime.live import LiveModels, batcher_config
from genoserve.runtime.placement import Placement, placement
from genoserve.runtime.session import CPU, CUDA
from genoserve.runtime.spec import CpuServingSpec, ModelSpec
from tests.support.models import linear_onnx, linear_spec, write_model

REPO = Path(__file__).resolve().parents[3]
EIGHT = CpuBudget(8)


def spec(cpu_serving: CpuServingSpec | None) -> ModelSpec:
    document = {**linear_spec("m"), "versions": [{"version": 1, "sha256": "0" * 64}]}
    if cpu_serving is not None:
        document["cpu_serving"] = cpu_serving.model_dump()
    return ModelSpec.model_validate(document)


def test_without_hint_one_call_on_onnx_runtimes_default_threads() -> None:
    assert placement(spec(None), RuntimeSettings(), cpu=True, online=True, budget=EIGHT) == Placement(0, 1)


def test_hint_one_single_threaded_call_per_core_online_on_cpu() -> None:
    hint = CpuServingSpec(intra_op_threads=1, instances=0)
    assert placement(spec(hint), RuntimeSettings(), cpu=True, online=True, budget=EIGHT) == Placement(1, 8)
    two = CpuServingSpec(intra_op_threads=2, instances=0)
    assert placement(spec(two), RuntimeSettings(), cpu=True, online=True, budget=EIGHT) == Placement(2, 4)
    fixed = CpuServingSpec(intra_op_threads=1, instances=3)
    assert placement(spec(fixed), RuntimeSettings(), cpu=True, online=True, budget=EIGHT) == Placement(1, 3)


@pytest.mark.parametrize(("cpu", "online"), [(False, True), (True, False)])
def test_hint_ignored_on_gpu_and_in_bulk_workers(cpu: bool, online: bool) -> None:
    hint = CpuServingSpec(intra_op_threads=1, instances=0)
    assert placement(spec(hint), RuntimeSettings(), cpu=cpu, online=online, budget=EIGHT) == Placement(0, 1)


def test_operator_settings_win_over_the_hint() -> None:
    hint = CpuServingSpec(intra_op_threads=1, instances=0)
    threads = RuntimeSettings(intra_op_threads=4)
    assert placement(spec(hint), threads, cpu=True, online=True, budget=EIGHT) == Placement(4, 2)
    both = RuntimeSettings(intra_op_threads=2, instances=1)
    assert placement(spec(hint), both, cpu=True, online=True, budget=EIGHT) == Placement(2, 1)
    assert placement(spec(None), RuntimeSettings(instances=3), cpu=False, online=True, budget=EIGHT).instances == 3


def test_default_threads_capped_at_a_containers_quota() -> None:
    pod = CpuBudget(affinity=64, quota=2.0)  # limits.cpu: 2 on a 64-core node
    assert placement(spec(None), RuntimeSettings(), cpu=True, online=True, budget=pod) == Placement(2, 1)
    assert placement(spec(None), RuntimeSettings(), cpu=True, online=False, budget=pod) == Placement(2, 1)
    hint = CpuServingSpec(intra_op_threads=1, instances=0)
    assert placement(spec(hint), RuntimeSettings(), cpu=True, online=True, budget=pod) == Placement(1, 2)
    assert placement(spec(None), RuntimeSettings(), cpu=False, online=True, budget=pod) == Placement(0, 1)


def test_split_rows_follow_the_hint_where_more_than_one_call_runs() -> None:
    hint = CpuServingSpec(intra_op_threads=1, instances=0, split_rows=512)
    assert placement(spec(hint), RuntimeSettings(), cpu=True, online=True, budget=EIGHT) == Placement(1, 8, 512)
    one = RuntimeSettings(instances=1)  # nothing to split across
    assert placement(spec(hint), one, cpu=True, online=True, budget=EIGHT) == Placement(1, 1, 0)
    assert placement(spec(hint), RuntimeSettings(), cpu=False, online=True, budget=EIGHT) == Placement(0, 1, 0)


def test_committed_models_ask_for_one_call_per_core() -> None:
    records = {r.name: r for r in registry.scan(REPO / "models")}
    plans = {
        "deepvariant-cnn-6ch": CpuServingSpec(intra_op_threads=1, instances=0, split_rows=16),
        "deepvariant-cnn-7ch": CpuServingSpec(intra_op_threads=1, instances=0, split_rows=16),
        "scvi-pbmc": CpuServingSpec(intra_op_threads=1, instances=0, split_rows=512),
        "scvi-sim-batch": CpuServingSpec(intra_op_threads=1, instances=0, split_rows=512),
    }
    for name, plan in plans.items():
        spec_ = records[name].spec
        assert spec_ is not None
        assert spec_.cpu_serving == plan


async def test_repository_serves_with_the_plan(tmp_path: Path) -> None:
    hinted = linear_spec("hinted", cpu_serving={"intra_op_threads": 1, "instances": 3, "split_rows": 16})
    write_model(tmp_path, hinted, {1: linear_onnx()})
    write_model(tmp_path, linear_spec("plain"), {1: linear_onnx()})
    repository = LiveModels(RuntimeSettings(model_dir=tmp_path, device="cpu"))
    await repository.load()
    try:
        statuses = {s.name: s for s in repository.statuses()}
        assert statuses["hinted"].batching.instances == 3
        assert statuses["hinted"].batching.split_rows == 16
        assert statuses["plain"].batching.instances == 1
        assert statuses["plain"].batching.split_rows == 0
        assert repository.get("hinted").session.intra_op_threads == 1
    finally:
        await repository.close(1)


@pytest.mark.parametrize(
    ("block", "key"),
    [({"intra_op_threads": 0, "instances": 0}, "intra_op_threads"), ({"split_rows": -1}, "split_rows")],
)
async def test_bad_cpu_serving_keeps_the_model_out_with_its_reason(tmp_path: Path, block: dict[str, int],
                                                                   key: str) -> None:  # fmt: skip
    write_model(tmp_path, linear_spec("bad", cpu_serving=block), {1: linear_onnx()})
    write_model(tmp_path, linear_spec("good"), {1: linear_onnx()})
    repository = LiveModels(RuntimeSettings(model_dir=tmp_path, device="cpu"))
    await repository.load()
    try:
        statuses = {s.name: s for s in repository.statuses()}
        assert not statuses["bad"].ready
        assert "cpu_serving" in statuses["bad"].reason
        assert key in statuses["bad"].reason
        assert statuses["good"].ready
    finally:
        await repository.close(1)


def test_short_calls_run_on_the_loop_for_a_cpu_session_never_for_a_gpu_one() -> None:
    """The GPU computes while the CPU is free: its calls stay off the event loop, which forms the
    next batch meanwhile; a CPU session's short calls run inline (``BatcherConfig.inline_call_us``)."""
    cpu = batcher_config(spec(None), RuntimeSettings(), CPU, EIGHT)
    gpu = batcher_config(spec(None), RuntimeSettings(), CUDA, EIGHT)
    assert cpu.inline_call_us == BatcherConfig.inline_call_us > 0
    assert gpu.inline_call_us == 0
