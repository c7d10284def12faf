"""Offline work on a model repository: check every version as the server would, and add a model
(or a new version of one) from an ONNX file. Neither needs a running server.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import helper

from genoserve.core.errors import GenoserveError, InvalidArgument
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.loader import load_session
from genoserve.runtime.registry import MODEL_FILE, ONNX_FILE, ModelState, external_data, sha256_of
from genoserve.runtime.spec import DTYPES, is_version_file

#: As model.yaml's ``name`` pattern (``genoserve.runtime.spec.ModelSpec``).
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ONNX_DTYPES = {np.dtype(dtype).name: name for name, (dtype, _) in DTYPES.items()}


@dataclass(frozen=True)
class VersionCheck:
    name: str
    version: str
    ok: bool
    reason: str = ""


def _offline(settings: RuntimeSettings) -> RuntimeSettings:
    """CPU, warm-up on, one thread per call: the checks, not the speed, matter here."""
    return settings.model_copy(update={"device": "cpu", "warmup": True, "intra_op_threads": 1})


def check_repository(folder: Path, settings: RuntimeSettings, only: tuple[str, ...] = ()) -> list[VersionCheck]:
    """Every version in ``folder`` through the server's checks: model.yaml and its family
    contract, the file's sha256, the graph against model.yaml, and a run on a made-up input."""
    if not folder.is_dir():
        raise InvalidArgument.field("model_dir", f"{folder} is not a folder")
    checks: list[VersionCheck] = []
    offline = _offline(settings)
    for record in registry.scan(folder, only):
        if record.state is ModelState.FAILED:
            checks.append(VersionCheck(record.name, record.version_label, False, record.reason))
            continue
        try:
            load_session(record, offline)
        except GenoserveError as exc:
            checks.append(VersionCheck(record.name, record.version_label, False, exc.message))
        else:
            checks.append(VersionCheck(record.name, record.version_label, True))
    return checks


def _ports(values: Any, initializers: set[str]) -> list[dict[str, Any]]:
    ports = []
    for value in values:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        numpy_name = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        if numpy_name not in _ONNX_DTYPES:
            raise InvalidArgument.field("onnx", f"{value.name} has dtype {numpy_name}, which genoserve does not serve")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        ports.append({"name": value.name, "dtype": _ONNX_DTYPES[numpy_name], "shape": [-1, *dims[1:]] if dims else []})
    return ports


def graph_ports(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs and outputs as model.yaml entries (the batch dimension made -1)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise InvalidArgument.field("onnx", f"{path} is not an ONNX model: {exc}") from exc
    initializers = {i.name for i in model.graph.initializer}
    return _ports(model.graph.input, initializers), _ports(model.graph.output, set())


@dataclass(frozen=True)
class NewModel:
    """What ``models add`` writes for a model not yet in the repository: the family, labels of
    its ports (``{port name: labels}``), its ``preprocessing`` block and a description."""

    family: str
    labels: dict[str, list[str]]
    preprocessing: dict[str, Any]
    description: str = ""


def _new_spec(name: str, ports: tuple[list[dict[str, Any]], list[dict[str, Any]]], new: NewModel) -> dict[str, Any]:
    inputs, outputs = ports
    for port in (*inputs, *outputs):
        if port["name"] in new.labels:
            port["labels"] = list(new.labels[port["name"]])
    unknown = sorted(set(new.labels) - {p["name"] for p in (*inputs, *outputs)})
    if unknown:
        raise InvalidArgument.field("labels", f"the graph has no port {unknown}; its ports: "
                                    f"{[p['name'] for p in (*inputs, *outputs)]}")  # fmt: skip
    spec: dict[str, Any] = {"name": name, "family": new.family, "description": new.description,
                            "inputs": inputs, "outputs": outputs}  # fmt: skip
    if new.preprocessing:
        spec["preprocessing"] = dict(new.preprocessing)
    return spec


def _external_files(onnx_path: Path) -> list[str]:
    """The files beside ``onnx_path`` its graph keeps tensors in (ONNX external data), each a
    plain path inside the graph's folder that exists; INVALID_ARGUMENT naming one that is not."""
    try:
        locations = external_data(onnx_path)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise InvalidArgument.field("onnx", f"{onnx_path} is not an ONNX model: {exc}") from exc
    for location in locations:
        if not is_version_file(location):
            raise InvalidArgument.field(
                "onnx", f"{onnx_path} keeps tensors in {location!r}, not a plain file path beside the graph"
            )
        if not (onnx_path.parent / location).is_file():
            raise InvalidArgument.field("onnx", f"{onnx_path} keeps tensors in {location}, which is missing")
    return locations


def add_version(
    repository: Path, name: str, onnx_path: Path, settings: RuntimeSettings, new: NewModel | None = None
) -> VersionCheck:
    """Write ``onnx_path`` as the next version of ``name`` in ``repository`` (a new model needs
    ``new``), only once it passes ``check_repository``'s checks; INVALID_ARGUMENT with what would
    not load otherwise, and nothing is written."""
    if not MODEL_NAME.fullmatch(name):
        raise InvalidArgument.field("name", f"must be lower-case letters, digits, '.', '_' and '-', got {name[:80]!r}")
    if not onnx_path.is_file():
        raise InvalidArgument.field("onnx", f"{onnx_path} is not a file")
    target = repository / name
    existing = target / MODEL_FILE
    if existing.is_file():
        spec = yaml.safe_load(existing.read_text())
        if new is not None and new.family != spec.get("family"):
            raise InvalidArgument.field("family", f"{name} is a {spec.get('family')} model in {repository}")
        number = max((int(v["version"]) for v in spec.get("versions") or []), default=0) + 1
    else:
        if new is None:
            raise InvalidArgument.field("family", f"{name} is not in {repository}: a new model needs its family")
        spec, number = _new_spec(name, graph_ports(onnx_path), new), 1
    if (target / str(number)).exists():
        raise InvalidArgument.field("name", f"{target / str(number)} exists but model.yaml does not list it")
    files = _external_files(onnx_path)
    entry: dict[str, Any] = {"version": number, "sha256": sha256_of(onnx_path)}
    if files:
        entry["files"] = {location: sha256_of(onnx_path.parent / location) for location in files}
    spec["versions"] = [*(spec.get("versions") or []), entry]
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repository, prefix=".add-") as staging:
        folder = Path(staging) / name
        (folder / str(number)).mkdir(parents=True)
        shutil.copyfile(onnx_path, folder / str(number) / ONNX_FILE)
        for location in files:  # the graph's external data, beside it as the graph names it
            (folder / str(number) / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(onnx_path.parent / location, folder / str(number) / location)
        (folder / MODEL_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
        [check] = [c for c in check_repository(Path(staging), settings, (name,)) if c.version in (str(number), "")]
        if not check.ok:
            raise InvalidArgument.field("onnx", f"{name} version {number} would not load: {check.reason}")
        (target / str(number)).parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder / str(number), target / str(number))
        os.replace(folder / MODEL_FILE, existing)  # the version's file first, its listing last
    return VersionCheck(name, str(number), True)
