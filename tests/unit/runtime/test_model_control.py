"""Live model control (runtime.model_control) of the repository over a model folder."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from genoserve.core.errors import FailedPrecondition, NotFound, Unavailable
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime.authoring import NewModel, add_version
from genoserve.runtime.live import LiveModels
from genoserve.runtime.registry import ModelState, ModelVersionRecord
from genoserve.runtime.session import OrtSession
from tests.support.models import WEIGHTS, external_graph, linear_onnx, linear_spec, write_model

X = np.ones((2, 4), dtype=np.float32)


async def started(model_dir: Path, **settings: Any) -> LiveModels:
    repository = LiveModels(RuntimeSettings(model_dir=model_dir, **settings))
    await repository.load()
    return repository


async def infer(repository: LiveModels, name: str) -> dict[str, Any]:
    """One request as the server runs it: its own task, which holds the version it got."""

    async def request() -> dict[str, Any]:
        return await repository.get(name).infer({"x": X})

    return await asyncio.create_task(request())


def states(repository: LiveModels) -> dict[tuple[str, str], ModelState]:
    return {(s.name, s.version): s.state for s in repository.statuses()}


async def test_refresh_loads_new_versions_and_unloads_removed_ones(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1)})
    repository = await started(tmp_path)
    try:
        write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1), 2: linear_onnx(seed=2)})
        await repository.refresh()
        assert repository.latest_version("m") == "2"
        assert states(repository) == {("m", "1"): ModelState.READY, ("m", "2"): ModelState.READY}
        write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1)})  # version 2 withdrawn
        shutil.rmtree(tmp_path / "m" / "2")
        await repository.refresh()
        await asyncio.sleep(0.05)  # the drain of a version nobody holds ends at once
        assert states(repository) == {("m", "1"): ModelState.READY}
        assert repository.latest_version("m") == "1"
        with pytest.raises(NotFound, match="no version '2'"):
            repository.get("m", "2")
    finally:
        await repository.close(1)


async def test_a_version_failing_its_checks_leaves_the_previous_serving(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1)})
    repository = await started(tmp_path)
    try:
        write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1), 2: linear_onnx(seed=2)},
                    sha_override={2: "0" * 64})  # fmt: skip
        await repository.refresh()
        [failed] = [s for s in repository.statuses() if s.version == "2"]
        assert failed.state is ModelState.FAILED
        assert "sha256" in failed.reason
        assert repository.latest_version("m") == "1"
        assert repository.families_ready() == {"platform": True}  # the family keeps serving
        # Fixed in place (the right sha256 declared): the next refresh tries the version again.
        write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1), 2: linear_onnx(seed=2)})
        await repository.refresh()
        assert repository.latest_version("m") == "2"
    finally:
        await repository.close(1)


async def test_a_version_whose_weights_file_is_replaced_is_tried_again(tmp_path: Path) -> None:
    """A version failing on a file its graph reads (external data) is retried once that file
    changes, as for model.onnx."""
    add_version(tmp_path, "lin", external_graph(tmp_path / "export"), RuntimeSettings(), NewModel("platform", {}, {}))
    weights = tmp_path / "lin" / "1" / WEIGHTS
    good = weights.read_bytes()
    weights.write_bytes(good[:-4] + b"\0\0\0\0")
    repository = await started(tmp_path)
    try:
        [failed] = repository.statuses()
        assert failed.state is ModelState.FAILED
        assert f"{weights} sha256 is" in failed.reason
        weights.write_bytes(good)
        await repository.refresh()
        assert states(repository) == {("lin", "1"): ModelState.READY}
    finally:
        await repository.close(1)


async def test_a_loaded_version_is_immutable(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1)})
    repository = await started(tmp_path)
    try:
        before = await infer(repository, "m")
        write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=9)})  # same number, new file
        await repository.refresh()
        [status] = repository.statuses()
        assert status.state is ModelState.READY
        assert "immutable" in status.reason
        after = await infer(repository, "m")
        np.testing.assert_array_equal(before["y"], after["y"])
    finally:
        await repository.close(1)


async def test_unload_lets_a_request_that_holds_the_version_finish(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("m"), {1: linear_onnx()})
    repository = await started(tmp_path, model_control="explicit")
    order: list[str] = []
    got = asyncio.Event()

    async def request() -> dict[str, Any]:
        model = repository.get("m")  # held from here: preparing a request takes time
        got.set()
        await asyncio.sleep(0.3)
        out = await model.infer({"x": X})
        order.append("request")
        return out

    try:
        running = asyncio.create_task(request())
        await got.wait()
        unloading = asyncio.create_task(repository.unload("m"))
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable, match="no ready version"):
            repository.get("m")  # new requests are turned away at once
        assert await unloading == ["1"]
        order.append("unloaded")
        assert (await running)["y"].shape == (2, 3)
        assert order == ["request", "unloaded"]
        with pytest.raises(NotFound):
            repository.get("m")
    finally:
        await repository.close(1)


async def test_explicit_load_and_unload(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("a"), {1: linear_onnx()})
    repository = await started(tmp_path, model_control="explicit")
    try:
        write_model(tmp_path, linear_spec("b"), {1: linear_onnx(seed=1), 2: linear_onnx(seed=2)})
        with pytest.raises(NotFound):
            repository.get("b")  # explicit: nothing changes until asked
        records = await repository.load_model("b", "1")
        assert [(r.version_label, r.state) for r in records] == [("1", ModelState.READY)]
        assert repository.latest_version("b") == "1"
        await repository.load_model("b")
        assert repository.latest_version("b") == "2"
        assert await repository.unload("b", "2") == ["2"]
        assert repository.latest_version("b") == "1"
        with pytest.raises(NotFound, match="'nope' is not in the repository"):
            await repository.load_model("nope")
        with pytest.raises(NotFound, match="is not loaded"):
            await repository.unload("nope")
        index = {(e.name, e.version): e.state for e in await repository.index()}
        assert index == {("a", "1"): ModelState.READY, ("b", "1"): ModelState.READY, ("b", "2"): None}
    finally:
        await repository.close(1)


async def test_a_load_that_fails_says_why(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("a"), {1: linear_onnx()})
    repository = await started(tmp_path, model_control="explicit")
    try:
        write_model(tmp_path, linear_spec("b"), {1: linear_onnx()}, sha_override={1: "0" * 64})
        with pytest.raises(FailedPrecondition, match=r"model b did not load: version 1: .*sha256"):
            await repository.load_model("b")
    finally:
        await repository.close(1)


@pytest.mark.parametrize("mode", ["none", "poll"])
async def test_load_and_unload_need_explicit_control(tmp_path: Path, mode: str) -> None:
    write_model(tmp_path, linear_spec("a"), {1: linear_onnx()})
    repository = await started(tmp_path, model_control=mode, poll_interval_s=60)
    try:
        with pytest.raises(FailedPrecondition, match=f"model_control: explicit; this server's is '{mode}'"):
            await repository.load_model("a")
        with pytest.raises(FailedPrecondition):
            await repository.unload("a")
    finally:
        await repository.close(1)


async def test_poll_follows_the_folder(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1)})
    repository = await started(tmp_path, model_control="poll", poll_interval_s=0.1)
    try:
        write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1), 2: linear_onnx(seed=2)})
        for _ in range(100):
            if repository.latest_version("m") == "2":
                break
            await asyncio.sleep(0.05)
        assert repository.latest_version("m") == "2"
    finally:
        await repository.close(1)


def store_metrics(control: str) -> tuple[float, float]:
    """(failed reads of the store, unix time of the last successful one) for ``control``."""
    labels = {"model_control": control}
    failures = REGISTRY.get_sample_value("genoserve_model_store_sync_failures_total", labels)
    success = REGISTRY.get_sample_value("genoserve_model_store_last_success_timestamp_seconds", labels)
    assert failures is not None
    assert success is not None
    return failures, success


async def test_a_store_that_stops_answering_is_counted_and_the_loaded_versions_serve_on(tmp_path: Path) -> None:
    folder = tmp_path / "repo"
    write_model(folder, linear_spec("m"), {1: linear_onnx(seed=1)})
    repository = await started(folder, model_control="poll", poll_interval_s=0.05)
    try:
        failures, success = store_metrics("poll")
        folder.rename(tmp_path / "away")  # the volume is gone
        for _ in range(200):
            if store_metrics("poll")[0] >= failures + 2:
                break
            await asyncio.sleep(0.02)
        stale_failures, stale_success = store_metrics("poll")
        assert stale_failures >= failures + 2
        assert stale_success >= success  # the last success: at the latest the poll before the move
        await asyncio.sleep(0.2)
        assert store_metrics("poll")[1] == stale_success
        assert (await infer(repository, "m"))["y"].shape == (2, 3)  # version 1 serves on
        assert repository.latest_version("m") == "1"

        (tmp_path / "away").rename(folder)
        for _ in range(200):
            if store_metrics("poll")[1] > stale_success:
                break
            await asyncio.sleep(0.02)
        assert store_metrics("poll")[1] > stale_success
    finally:
        await repository.close(1)


class SlowWarmUp(LiveModels):
    """A repository whose version loads (checks, session, warm-up) wait for ``gate``, as a large
    model's do, so that a test can act while one is under way."""

    def __init__(self, settings: RuntimeSettings) -> None:
        super().__init__(settings)
        self.gate = threading.Event()
        self.gate.set()

    def _load_version(self, record: ModelVersionRecord) -> OrtSession | None:
        assert self.gate.wait(30), "the test never opened the gate"
        return super()._load_version(record)


async def loading(repository: LiveModels, key: tuple[str, str]) -> None:
    for _ in range(200):
        if states(repository).get(key) is ModelState.LOADING:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} never started loading: {states(repository)}")


async def test_the_index_and_unload_answer_while_a_version_warms_up(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("a"), {1: linear_onnx()})
    repository = SlowWarmUp(RuntimeSettings(model_dir=tmp_path, model_control="explicit"))
    await repository.load()
    try:
        write_model(tmp_path, linear_spec("b"), {1: linear_onnx(seed=1)})
        repository.gate.clear()
        load = asyncio.create_task(repository.load_model("b"))
        await loading(repository, ("b", "1"))
        index = {(e.name, e.version): e.state for e in await asyncio.wait_for(repository.index(), 5)}
        assert index == {("a", "1"): ModelState.READY, ("b", "1"): ModelState.LOADING}
        assert await asyncio.wait_for(repository.unload("a"), 5) == ["1"]
        assert not load.done()
        repository.gate.set()
        records = await asyncio.wait_for(load, 30)
        assert [(r.name, r.version_label, r.state) for r in records] == [("b", "1", ModelState.READY)]
        assert (await infer(repository, "b"))["y"].shape == (2, 3)
    finally:
        repository.gate.set()
        await repository.close(1)


async def version_2_warming_up(tmp_path: Path) -> tuple[SlowWarmUp, asyncio.Task[Any]]:
    """Model m serving version 1, and a Load of its version 2 held in its warm-up."""
    write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1)})
    repository = SlowWarmUp(RuntimeSettings(model_dir=tmp_path, model_control="explicit"))
    await repository.load()
    write_model(tmp_path, linear_spec("m"), {1: linear_onnx(seed=1), 2: linear_onnx(seed=2)})
    repository.gate.clear()
    load = asyncio.create_task(repository.load_model("m", "2"))
    await loading(repository, ("m", "2"))
    return repository, load


async def test_a_version_unloaded_while_it_warms_up_is_never_served(tmp_path: Path) -> None:
    repository, load = await version_2_warming_up(tmp_path)
    try:
        assert await asyncio.wait_for(repository.unload("m", "2"), 5) == ["2"]
        repository.gate.set()
        records = await asyncio.wait_for(load, 30)  # the Load says what became of it
        assert [(r.version_label, r.state, r.reason) for r in records] == [
            ("2", ModelState.UNLOADING, "unloaded while it loaded")
        ]
        assert states(repository) == {("m", "1"): ModelState.READY}
        assert repository.latest_version("m") == "1"
        with pytest.raises(NotFound, match="no version '2'"):
            repository.get("m", "2")
        assert REGISTRY.get_sample_value("genoserve_model_ready", {"model": "m", "version": "2"}) is None
        await repository.load_model("m", "2")  # asked again, it loads
        assert repository.latest_version("m") == "2"
    finally:
        repository.gate.set()
        await repository.close(1)


async def test_closing_while_a_version_warms_up_does_not_wait_for_it_nor_serve_it(tmp_path: Path) -> None:
    repository, load = await version_2_warming_up(tmp_path)
    try:
        await asyncio.wait_for(repository.close(1), 5)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(load, 5)  # the Load ends with the server
    finally:
        repository.gate.set()
    await asyncio.sleep(0.1)  # the load's thread finishes; what it made is dropped
    assert ("m", "2") not in {(s.name, s.version) for s in repository.statuses() if s.ready}
