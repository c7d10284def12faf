"""`genoserve models add` and `models validate`: offline, on a repository no server serves."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from genoserve.cli.main import cli
from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime.authoring import NewModel, add_version, check_repository
from genoserve.runtime.registry import ModelState, scan
from tests.support.server import REPO

MODELS = REPO / "models"
CTCF = MODELS / "deepbind-ctcf" / "1" / "model.onnx"
SETTINGS = RuntimeSettings()


def test_a_new_binding_model_is_written_checked_and_served_as_declared(tmp_path: Path) -> None:
    new = NewModel("binding", {"logit": ["CTCF"]}, {"default_strand": "mean"}, "my CTCF model")
    check = add_version(tmp_path, "my-ctcf", CTCF, SETTINGS, new)
    assert check.version == "1"
    [record] = scan(tmp_path)
    assert record.state is not ModelState.FAILED
    assert record.contract.tasks == ["CTCF"]
    assert record.contract.default_strand == "mean"
    assert record.contract.length == 101
    assert (tmp_path / "my-ctcf" / "1" / "model.onnx").read_bytes() == CTCF.read_bytes()
    # The next version of the same model: its graph is checked against the model.yaml written.
    gata = MODELS / "deepbind-gata1" / "1" / "model.onnx"
    assert add_version(tmp_path, "my-ctcf", gata, SETTINGS).version == "2"
    assert [c.ok for c in check_repository(tmp_path, SETTINGS)] == [True, True]


def test_a_model_that_would_not_load_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    cellpose = MODELS / "cellpose-nuclei" / "1" / "model.onnx"
    with pytest.raises(InvalidArgument, match="breaks the binding contract: input image must be float32"):
        add_version(tmp_path, "wrong", cellpose, SETTINGS, NewModel("binding", {}, {}))
    with pytest.raises(InvalidArgument, match=r"preprocessing\.strand: Extra inputs are not permitted"):
        add_version(tmp_path, "typo", CTCF, SETTINGS, NewModel("binding", {}, {"strand": "max"}))
    with pytest.raises(InvalidArgument, match="the graph has no port \\['y'\\]"):
        add_version(tmp_path, "labels", CTCF, SETTINGS, NewModel("binding", {"y": ["a"]}, {}))
    assert [p.name for p in tmp_path.iterdir()] == []
    add_version(tmp_path, "my-ctcf", CTCF, SETTINGS, NewModel("binding", {}, {}))
    before = (tmp_path / "my-ctcf" / "model.yaml").read_text()
    with pytest.raises(InvalidArgument, match=r"version 2 would not load: ONNX graph does not match model\.yaml"):
        add_version(tmp_path, "my-ctcf", MODELS / "platform-mlp" / "1" / "model.onnx", SETTINGS)
    assert (tmp_path / "my-ctcf" / "model.yaml").read_text() == before
    assert sorted(p.name for p in (tmp_path / "my-ctcf").iterdir()) == ["1", "model.yaml"]


def test_validate_reports_each_broken_version_and_exits_nonzero(tmp_path: Path) -> None:
    shutil.copytree(MODELS / "platform-mlp", tmp_path / "platform-mlp")
    shutil.copytree(MODELS / "deepbind-ctcf", tmp_path / "deepbind-ctcf")
    runner = CliRunner()
    ok = runner.invoke(cli, ["models", "validate", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines() == ["deepbind-ctcf version 1: ok", "platform-mlp version 1: ok"]
    spec_path = tmp_path / "deepbind-ctcf" / "model.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["preprocessing"]["default_strand"] = "both"
    spec_path.write_text(yaml.safe_dump(spec))
    (tmp_path / "platform-mlp" / "1" / "model.onnx").write_bytes(b"truncated")
    bad = runner.invoke(cli, ["models", "validate", str(tmp_path)])
    assert bad.exit_code == 1
    lines = bad.output.splitlines()
    assert lines[0].startswith("deepbind-ctcf version 1: FAILED: model.yaml breaks the binding contract")
    assert lines[1].startswith("platform-mlp version 1: FAILED:")
    assert "sha256" in lines[1]


def test_add_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, [
        "models", "add", "my-ctcf", "--onnx", str(CTCF), "--model-dir", str(tmp_path), "--family", "binding",
        "--labels", "logit=CTCF", "--set", "default_strand=forward",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "version 1: written, checked and warmed up" in result.output
    [record] = scan(tmp_path)
    assert record.contract.default_strand == "forward"
