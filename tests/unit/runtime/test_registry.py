"""Registry and repository: each kind of broken model is kept out with its reason; the rest serve."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from genoserve.core.errors import InvalidArgument, NotFound, Unavailable
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime.live import LiveModels
from genoserve.runtime.registry import ModelState
from tests.support.models import linear_onnx, linear_reference, linear_spec, write_model


async def load(model_dir: Path) -> LiveModels:
    repository = LiveModels(RuntimeSettings(model_dir=model_dir))
    await repository.load()
    return repository


def state_of(repository: LiveModels, name: str) -> tuple[ModelState, str]:
    [status] = [s for s in repository.statuses() if s.name == name]
    return status.state, status.reason


async def test_valid_model_serves_correct_outputs(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("good"), {1: linear_onnx()})
    repository = await load(tmp_path)
    assert state_of(repository, "good") == (ModelState.READY, "")
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    out = await repository.get("good").infer({"x": x})
    np.testing.assert_allclose(out["y"], linear_reference(x), rtol=1e-5, atol=1e-5)
    await repository.close(1)


def _broken_cases() -> list[tuple[str, Any, str]]:
    """(case id, function writing a broken model named 'bad' into a dir, expected reason fragment)."""

    def bad_yaml(root: Path) -> None:
        (root / "bad").mkdir()
        (root / "bad" / "model.yaml").write_text("name: bad\ninputs: [unclosed\n")

    def schema(root: Path) -> None:
        spec = linear_spec("bad")
        spec["inputs"][0]["dtype"] = "float33"
        write_model(root, spec, {1: linear_onnx()})

    def no_versions(root: Path) -> None:
        (root / "bad").mkdir()
        (root / "bad" / "model.yaml").write_text(yaml.safe_dump({**linear_spec("bad"), "versions": []}))

    def name_mismatch(root: Path) -> None:
        directory = write_model(root, linear_spec("other"), {1: linear_onnx()})
        directory.rename(root / "bad")

    def missing_file(root: Path) -> None:
        write_model(root, linear_spec("bad"), {1: linear_onnx()})
        (root / "bad" / "1" / "model.onnx").unlink()

    def checksum(root: Path) -> None:
        write_model(root, linear_spec("bad"), {1: linear_onnx()}, sha_override={1: "0" * 64})

    def input_name(root: Path) -> None:
        spec = linear_spec("bad")
        spec["inputs"][0]["name"] = "features"
        write_model(root, spec, {1: linear_onnx()})

    def dtype(root: Path) -> None:
        spec = linear_spec("bad")
        spec["outputs"][0]["dtype"] = "int64"
        write_model(root, spec, {1: linear_onnx()})

    def rank(root: Path) -> None:
        spec = linear_spec("bad")
        spec["inputs"][0]["shape"] = [-1, 4, 1]
        write_model(root, spec, {1: linear_onnx()})

    def fixed_dim(root: Path) -> None:
        write_model(root, linear_spec("bad", n_in=5), {1: linear_onnx()})

    def fixed_batch(root: Path) -> None:
        write_model(root, linear_spec("bad"), {1: linear_onnx(batch_dim=8)})

    def not_onnx(root: Path) -> None:
        write_model(root, linear_spec("bad"), {1: b"this is not an onnx graph"})

    return [
        ("bad-yaml", bad_yaml, "not valid YAML"),
        ("schema", schema, "inputs.0.dtype"),
        ("no-versions", no_versions, "versions"),
        ("name-mismatch", name_mismatch, "does not match its directory"),
        ("missing-file", missing_file, "is missing"),
        ("checksum", checksum, "sha256 is"),
        ("input-name", input_name, "input names"),
        ("dtype", dtype, "dtype int64"),
        ("rank", rank, "rank 3"),
        ("fixed-dim", fixed_dim, "dim 1 is 4 in the graph, 5 in model.yaml"),
        ("fixed-batch", fixed_batch, "fixes the batch dimension"),
        ("not-onnx", not_onnx, "ONNX Runtime cannot load"),
    ]


@pytest.mark.parametrize(("writer", "reason"), [c[1:] for c in _broken_cases()], ids=[c[0] for c in _broken_cases()])
async def test_broken_model_is_kept_out_with_its_reason_and_others_load(
    tmp_path: Path, writer: Any, reason: str
) -> None:
    write_model(tmp_path, linear_spec("good"), {1: linear_onnx()})
    writer(tmp_path)
    repository = await load(tmp_path)
    state, why = state_of(repository, "bad")
    assert state is ModelState.FAILED
    assert reason in why
    assert state_of(repository, "good")[0] is ModelState.READY
    with pytest.raises(Unavailable, match="no ready version"):
        repository.get("bad")
    await repository.close(1)


async def test_versions_coexist_latest_by_default(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("multi"), {1: linear_onnx(seed=1), 3: linear_onnx(seed=3)})
    repository = await load(tmp_path)
    x = np.ones((2, 4), dtype=np.float32)
    assert repository.get("multi").version == "3"
    latest = await repository.get("multi").infer({"x": x})
    first = await repository.get("multi", "1").infer({"x": x})
    np.testing.assert_allclose(latest["y"], linear_reference(x, seed=3), rtol=1e-5)
    np.testing.assert_allclose(first["y"], linear_reference(x, seed=1), rtol=1e-5)
    with pytest.raises(NotFound, match="no version '2'"):
        repository.get("multi", "2")
    with pytest.raises(NotFound, match="not in the repository"):
        repository.get("nope")
    await repository.close(1)


async def test_latest_falls_back_when_newest_version_is_broken(tmp_path: Path) -> None:
    good = linear_onnx(seed=1)
    write_model(tmp_path, linear_spec("m"), {1: good, 2: linear_onnx(seed=2)}, sha_override={2: "f" * 64})
    repository = await load(tmp_path)
    assert repository.get("m").version == "1"
    with pytest.raises(Unavailable, match="version 2 is not ready"):
        repository.get("m", "2")
    await repository.close(1)


async def test_served_model_validates_inputs_before_batching(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("good"), {1: linear_onnx()})
    repository = await load(tmp_path)
    model = repository.get("good")
    with pytest.raises(InvalidArgument) as info:
        await model.infer({"x": np.ones((2, 4), dtype=np.float64), "extra": np.ones((2, 1), dtype=np.float32)})
    fields = {v.field for v in info.value.violations}
    assert fields == {"inputs[x]", "inputs[extra]"}
    await repository.close(1)


def test_committed_models_match_their_yaml() -> None:
    """Every model under models/ has a valid model.yaml whose sha256 matches its ONNX file."""
    from genoserve.runtime.registry import scan

    records = scan(Path(__file__).resolve().parents[3] / "models")
    assert records, "no models committed"
    for record in records:
        assert record.state is not ModelState.FAILED, record.reason
        assert hashlib.sha256(record.onnx_path.read_bytes()).hexdigest() == record.version.sha256  # type: ignore[union-attr]


async def test_families_setting_serves_only_those_families(tmp_path: Path) -> None:
    write_model(tmp_path, linear_spec("mine"), {1: linear_onnx()})
    write_model(tmp_path, {**linear_spec("theirs"), "family": "embedding"}, {1: linear_onnx()})
    repository = LiveModels(RuntimeSettings(model_dir=tmp_path, families=("platform",)))
    await repository.load()
    try:
        assert [s.name for s in repository.statuses()] == ["mine"]
        assert repository.families_ready() == {"platform": True}
        with pytest.raises(NotFound):
            repository.get("theirs")
    finally:
        await repository.close()
