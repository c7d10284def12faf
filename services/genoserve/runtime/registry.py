"""Reads the model repository and checks each model version before it may serve.

A broken model is reported with its reason (bad yaml, missing file, checksum, signature) and kept
out; the others still load.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from genoserve.core.errors import GenoserveError
from genoserve.runtime.contract import expect_contract
from genoserve.runtime.contracts import contract_of
from genoserve.runtime.session import PortSignature
from genoserve.runtime.spec import ModelSpec, TensorSpec, VersionSpec

log = logging.getLogger(__name__)

MODEL_FILE = "model.yaml"
ONNX_FILE = "model.onnx"
C = TypeVar("C")


class ModelState(enum.Enum):
    LOADING = 1
    READY = 2
    FAILED = 3
    UNLOADING = 4


@dataclass
class ModelVersionRecord:
    """One model version found in the repository and what became of it."""

    name: str
    directory: Path
    spec: ModelSpec | None = None
    version: VersionSpec | None = None
    state: ModelState = ModelState.LOADING
    reason: str = ""
    provider: str = ""
    #: The family's parsed contract (``genoserve.runtime.contracts``); None for ``platform`` and
    #: for a model that breaks its contract (``reason`` says how).
    contract: Any = None

    def contract_as(self, kind: type[C]) -> C:
        """The contract as the family ``kind`` (e.g. ``BindingContract``): INVALID_ARGUMENT naming
        the model when it is of another family, FAILED_PRECONDITION with the reason when it broke
        its contract."""
        assert self.spec is not None
        return expect_contract(kind, self.contract, self.spec, self.reason)

    @property
    def version_label(self) -> str:
        return str(self.version.version) if self.version else ""

    @property
    def onnx_path(self) -> Path:
        return self.directory / self.version_label / ONNX_FILE

    def fail(self, reason: str) -> None:
        self.state = ModelState.FAILED
        self.reason = reason
        log.error("model %s version %s kept out: %s", self.name, self.version_label or "?", reason)


def _format_validation(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())


def read_spec(directory: Path) -> ModelSpec:
    """Parse and validate ``directory/model.yaml``; ``ValueError`` with the reason otherwise."""
    path = directory / MODEL_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{path} is invalid: {_format_validation(exc)}") from exc
    if spec.name != directory.name:
        raise ValueError(f"{path}: name {spec.name!r} does not match its directory {directory.name!r}")
    return spec


def scan(model_dir: Path, only: tuple[str, ...] = (), families: tuple[str, ...] = ()) -> list[ModelVersionRecord]:
    """One record per model version in ``model_dir`` (or per unreadable model directory).

    ``only`` keeps these model names, ``families`` these model families (empty: all). An
    unreadable model directory is kept (its family is unknown) so that the failure is visible.
    """
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    records: list[ModelVersionRecord] = []
    for directory in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if only and directory.name not in only:
            continue
        if not (directory / MODEL_FILE).exists():
            continue  # not a model directory
        try:
            spec = read_spec(directory)
        except ValueError as exc:
            record = ModelVersionRecord(name=directory.name, directory=directory)
            record.fail(str(exc))
            records.append(record)
            continue
        if families and spec.family not in families:
            continue
        records += versions(directory, spec)
    return records


def read_model(directory: Path) -> list[ModelVersionRecord]:
    """The records of the model in ``directory``, as ``scan`` makes them; ``ValueError`` with the
    reason when its model.yaml cannot be read."""
    return versions(directory, read_spec(directory))


def versions(directory: Path, spec: ModelSpec) -> list[ModelVersionRecord]:
    """One record per version of ``spec``, with its family's contract parsed (the only place it is:
    ``genoserve.runtime.contracts``); every version FAILED with the reason when model.yaml breaks
    the contract, a version whose recorded metrics are below the contract's floors too."""
    try:
        contract = contract_of(spec)
    except GenoserveError as exc:  # kept out, each version with the reason
        contract, broken = None, exc.message
    else:
        broken = ""
    records = []
    for version in sorted(spec.versions, key=lambda v: v.version):
        record = ModelVersionRecord(spec.name, directory, spec, version, contract=contract)
        # A contract may floor recorded metrics (binding: preprocessing.metric_floors).
        below = getattr(contract, "below_floor", None)
        reason = broken or (below(version.metrics) if below is not None else "")
        if reason:
            record.fail(reason)
        records.append(record)
    return records


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(record: ModelVersionRecord) -> str | None:
    """The ONNX file and every file its graph reads exist and match the sha256 model.yaml
    declares for them (``sha256``, ``files``); returns the problem or None."""
    assert record.version is not None
    path = record.onnx_path
    if not path.is_file():
        return f"{path} is missing"
    actual = sha256_of(path)
    if actual != record.version.sha256:
        return f"{path} sha256 is {actual}, model.yaml declares {record.version.sha256}"
    declared = record.version.files
    folder = path.parent
    if not declared and not any(p.name != ONNX_FILE and not p.name.startswith(".") for p in folder.iterdir()):
        return None  # the graph alone (a graph reading other files would need them here)
    try:
        used = external_data(path)
    except Exception as exc:  # onnx raises DecodeError and friends
        return f"{path} is not an ONNX model: {exc}"
    undeclared = sorted(set(used) - set(declared))
    if undeclared:
        return (
            f"{path} keeps tensors in {undeclared}, which model.yaml's version {record.version_label} does not "
            "list under files (each with its sha256)"
        )
    for name, sha256 in declared.items():
        file = folder / name
        if not file.is_file():
            return f"{file} is missing"
        actual = sha256_of(file)
        if actual != sha256:
            return f"{file} sha256 is {actual}, model.yaml declares {sha256}"
    return None


def external_data(path: Path) -> list[str]:
    """The files (``location``s, relative to the graph's folder) in which the ONNX graph at
    ``path`` keeps tensors, in order of first use; read without loading them."""
    import onnx

    def tensors(graph: Any) -> Any:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    yield from tensors(attribute.g)
                for subgraph in attribute.graphs:
                    yield from tensors(subgraph)

    model = onnx.load(str(path), load_external_data=False)
    found: dict[str, None] = {}
    for tensor in tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found.update({e.value: None for e in tensor.external_data if e.key == "location"})
    return list(found)


def _check_ports(kind: str, declared: tuple[TensorSpec, ...], actual: list[PortSignature]) -> list[str]:
    problems: list[str] = []
    graph = {p.name: p for p in actual}
    wanted = {t.name for t in declared}
    if set(graph) != wanted:
        problems.append(f"{kind} names: model.yaml declares {sorted(wanted)}, the ONNX graph has {sorted(graph)}")
    for tensor in declared:
        port = graph.get(tensor.name)
        if port is None:
            continue
        if port.type != tensor.ort_type:
            problems.append(
                f"{kind} {tensor.name}: model.yaml dtype {tensor.dtype} ({tensor.ort_type}), graph {port.type}"
            )
        if len(port.shape) != len(tensor.shape):
            problems.append(
                f"{kind} {tensor.name}: model.yaml rank {len(tensor.shape)} {list(tensor.shape)}, "
                f"graph rank {len(port.shape)} {list(port.shape)}"
            )
            continue
        for axis, (want, have) in enumerate(zip(tensor.shape, port.shape, strict=True)):
            if want != -1 and isinstance(have, int) and have != want:
                problems.append(f"{kind} {tensor.name}: dim {axis} is {have} in the graph, {want} in model.yaml")
            if want == -1 and isinstance(have, int) and axis == 0:
                problems.append(f"{kind} {tensor.name}: the graph fixes the batch dimension to {have}")
    return problems


def check_signature(spec: ModelSpec, inputs: list[PortSignature], outputs: list[PortSignature]) -> list[str]:
    """Names, dtypes, ranks and fixed dims of the graph against model.yaml; the list of problems."""
    return _check_ports("input", spec.inputs, inputs) + _check_ports("output", spec.outputs, outputs)
