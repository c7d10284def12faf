"""Graphs that keep their tensors in other files (ONNX external data): each file is declared in
model.yaml with its sha256, copied by `models add`, checked before the version serves."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from pydantic import ValidationError

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import RuntimeSettings
from genoserve.jobs.local_models import LocalModels
from genoserve.runtime.authoring import NewModel, add_version, check_repository
from genoserve.runtime.registry import ModelState, check_file, external_data, scan
from genoserve.runtime.spec import VersionSpec
from tests.support.models import WEIGHTS, external_graph, linear_onnx, linear_reference

SETTINGS = RuntimeSettings()
PLATFORM = NewModel("platform", {}, {})


def test_models_add_copies_and_declares_the_graph_s_files_and_the_version_serves(tmp_path: Path) -> None:
    source = external_graph(tmp_path / "export")
    assert external_data(source) == [WEIGHTS]
    add_version(tmp_path / "repo", "lin", source, SETTINGS, PLATFORM)
    written = yaml.safe_load((tmp_path / "repo" / "lin" / "model.yaml").read_text())
    weights = (tmp_path / "export" / WEIGHTS).read_bytes()
    assert written["versions"][0]["files"] == {WEIGHTS: hashlib.sha256(weights).hexdigest()}
    assert (tmp_path / "repo" / "lin" / "1" / WEIGHTS).read_bytes() == weights
    [record] = scan(tmp_path / "repo")
    assert check_file(record) is None
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    model = LocalModels(SETTINGS.model_copy(update={"model_dir": tmp_path / "repo"})).get("lin", "1")
    np.testing.assert_allclose(model.infer_sync({"x": x})["y"], linear_reference(x), rtol=1e-5, atol=1e-5)


def test_a_changed_missing_or_undeclared_file_keeps_the_version_out(tmp_path: Path) -> None:
    add_version(tmp_path, "lin", external_graph(tmp_path / "export"), SETTINGS, PLATFORM)
    weights = tmp_path / "lin" / "1" / WEIGHTS
    good = weights.read_bytes()
    weights.write_bytes(good[:-4] + b"\0\0\0\0")
    [record] = scan(tmp_path)
    assert f"{weights} sha256 is" in str(check_file(record))
    [check] = check_repository(tmp_path, SETTINGS)
    assert not check.ok
    assert "model.yaml declares" in check.reason
    weights.unlink()
    assert check_file(record) == f"{weights} is missing"
    weights.write_bytes(good)
    spec = yaml.safe_load((tmp_path / "lin" / "model.yaml").read_text())
    del spec["versions"][0]["files"]
    (tmp_path / "lin" / "model.yaml").write_text(yaml.safe_dump(spec))
    [record] = scan(tmp_path)
    assert check_file(record) == (
        f"{tmp_path / 'lin' / '1' / 'model.onnx'} keeps tensors in ['{WEIGHTS}'], which model.yaml's version 1 "
        "does not list under files (each with its sha256)"
    )


def test_a_graph_alone_is_checked_as_before(tmp_path: Path) -> None:
    add_version(tmp_path, "lin", _plain(tmp_path), SETTINGS, PLATFORM)
    (tmp_path / "lin" / "1" / "NOTES.txt").write_text("not read by the graph")  # an extra file is left alone
    [record] = scan(tmp_path)
    assert record.state is not ModelState.FAILED
    assert check_file(record) is None
    assert "files" not in yaml.safe_load((tmp_path / "lin" / "model.yaml").read_text())["versions"][0]


def _plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain.onnx"
    path.write_bytes(linear_onnx())
    return path


@pytest.mark.parametrize("path", ["../w.bin", "/etc/passwd", "a/../../w.bin", "./w.bin", "model.onnx", "", "w b.bin"])
def test_model_yaml_files_are_plain_paths_inside_the_version_folder(path: str) -> None:
    with pytest.raises(ValidationError, match="not a file path inside the version's folder"):
        VersionSpec(version=1, sha256="0" * 64, files={path: "0" * 64})


def test_model_yaml_files_carry_a_sha256() -> None:
    with pytest.raises(ValidationError, match="is not a sha256"):
        VersionSpec(version=1, sha256="0" * 64, files={"w.bin": "abc"})


def test_models_add_refuses_a_graph_whose_files_lie_outside_its_folder_or_are_missing(tmp_path: Path) -> None:
    source = external_graph(tmp_path / "export")
    outside = onnx.load(str(source), load_external_data=False)
    for tensor in outside.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    onnx.save_model(outside, str(source))
    with pytest.raises(InvalidArgument, match=r"keeps tensors in '\.\./w\.bin', not a plain file path"):
        add_version(tmp_path / "repo", "lin", source, SETTINGS, PLATFORM)
    shutil.rmtree(tmp_path / "export")
    source = external_graph(tmp_path / "export")
    (tmp_path / "export" / WEIGHTS).unlink()
    with pytest.raises(InvalidArgument, match=f"keeps tensors in {WEIGHTS}, which is missing"):
        add_version(tmp_path / "repo", "lin", source, SETTINGS, PLATFORM)
    assert not (tmp_path / "repo" / "lin").exists()
