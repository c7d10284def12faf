"""The model.yaml contract (validated with pydantic) and the dtype vocabulary.

A model directory looks like Triton's model repository::

    models/<name>/model.yaml        # this schema; shared by all versions
    models/<name>/<version>/model.onnx

Versions are positive integers; "latest" is the highest one that loaded.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Family = Literal["platform", "binding", "variants", "segmentation", "embedding"]

#: dtype name in model.yaml -> (numpy dtype, ONNX Runtime type string)
DTYPES: dict[str, tuple[np.dtype[Any], str]] = {
    "float32": (np.dtype("<f4"), "tensor(float)"),
    "float16": (np.dtype("<f2"), "tensor(float16)"),
    "float64": (np.dtype("<f8"), "tensor(double)"),
    "int8": (np.dtype("i1"), "tensor(int8)"),
    "uint8": (np.dtype("u1"), "tensor(uint8)"),
    "int16": (np.dtype("<i2"), "tensor(int16)"),
    "uint16": (np.dtype("<u2"), "tensor(uint16)"),
    "int32": (np.dtype("<i4"), "tensor(int32)"),
    "uint32": (np.dtype("<u4"), "tensor(uint32)"),
    "int64": (np.dtype("<i8"), "tensor(int64)"),
    "uint64": (np.dtype("<u8"), "tensor(uint64)"),
    "bool": (np.dtype("?"), "tensor(bool)"),
}
DType = Literal[
    "float32", "float16", "float64", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "bool",
]  # fmt: skip


SHA256 = r"^[0-9a-f]{64}$"
#: A file path inside a version's folder: relative, '/'-separated, each part plain (never '.' or
#: '..': a part starts with a letter, digit or '_').
_VERSION_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")


def is_version_file(path: str) -> bool:
    """Whether ``path`` names a file inside a version's folder other than its model.onnx."""
    return bool(_VERSION_FILE.fullmatch(path)) and path != "model.onnx"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One input or output. ``shape`` uses -1 for dynamic dimensions; dim 0 is the batch."""

    name: str = Field(min_length=1)
    dtype: DType
    shape: tuple[int, ...]
    #: Names along the last dimension (task / class names).
    labels: tuple[str, ...] = ()
    description: str = ""
    #: Concrete sizes for dynamic non-batch dims used by the warm-up run (default 64 each).
    warmup_shape: tuple[int, ...] | None = None

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape:
            raise ValueError("shape must have a batch dimension (rank >= 1)")
        if shape[0] != -1:
            raise ValueError("the first dimension is the batch and must be -1 (dynamic)")
        if any(d == 0 or d < -1 for d in shape):
            raise ValueError("dimensions are positive sizes or -1 (dynamic)")
        return shape

    @model_validator(mode="after")
    def _labels_match(self) -> TensorSpec:
        if self.labels and len(self.shape) > 1 and self.shape[-1] != -1 and self.shape[-1] != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels for a last dimension of {self.shape[-1]}")
        if self.warmup_shape is not None and len(self.warmup_shape) != len(self.shape):
            raise ValueError("warmup_shape must have the same rank as shape")
        return self

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return DTYPES[self.dtype][0]

    @property
    def ort_type(self) -> str:
        return DTYPES[self.dtype][1]

    def example(self, batch: int = 1) -> np.ndarray[Any, Any]:
        """A zero array of this spec (dynamic dims from ``warmup_shape`` or 64), for warm-up."""
        dims = [batch]
        for i, d in enumerate(self.shape[1:], start=1):
            if d != -1:
                dims.append(d)
            elif self.warmup_shape is not None:
                dims.append(self.warmup_shape[i])
            else:
                dims.append(64)
        return np.zeros(dims, dtype=self.numpy_dtype)


class BatchingSpec(_Strict):
    """Per-model overrides of the server's batching defaults."""

    max_batch_size: int | None = Field(None, gt=0)
    max_queue_delay_us: int | None = Field(None, ge=0)
    max_queue_size: int | None = Field(None, gt=0)


class CpuServingSpec(_Strict):
    """How the server runs this model on a CPU (Triton's ``instance_group`` count and its ONNX
    Runtime backend's ``intra_op_thread_count``): ``instances`` session calls at once, each on
    ``intra_op_threads`` threads; ``instances: 0`` is one per available core (divided by the
    threads). On a CPU shared with the server's own work, separate single-threaded calls can
    keep the cores busier than one call on all of them (measured for the variants models:
    tests/bench/variants_bench.py). Only the online
    server uses it (a bulk worker makes one call at a time, on every core); the operator's
    ``runtime.intra_op_threads`` / ``runtime.instances``, when set, win. ``split_rows`` (0: never):
    a batch that finds nothing else queued and other instances idle is split by rows across them,
    each part at least this many rows, so that one request alone still uses every core (without
    ONNX Runtime's intra-op threads, whose per-operator hand-offs stall when the server's other
    threads take a core)."""

    intra_op_threads: int = Field(1, gt=0)
    instances: int = Field(0, ge=0)
    split_rows: int = Field(0, ge=0)


class VersionSpec(_Strict):
    version: int = Field(gt=0)
    #: Of ``<version>/model.onnx``.
    sha256: str = Field(pattern=SHA256)
    #: The other files the graph reads, by path in the version's folder -> sha256: the files an
    #: ONNX graph keeps its large tensors in ("external data"; a graph over 2 GB must).
    files: dict[str, str] = {}
    metrics: dict[str, float] = {}
    provenance: dict[str, str] = {}

    @field_validator("files")
    @classmethod
    def _plain_files(cls, files: dict[str, str]) -> dict[str, str]:
        for path, sha256 in files.items():
            if not is_version_file(path):
                raise ValueError(f"{path!r} is not a file path inside the version's folder (other than model.onnx)")
            if not re.fullmatch(SHA256, sha256):
                raise ValueError(f"{path}: {sha256!r} is not a sha256 (64 lower-case hex digits)")
        return files


class ModelSpec(_Strict):
    """The whole model.yaml."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    family: Family
    description: str = ""
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    #: Family-specific pre/post-processing parameters, as written: the registry parses them with
    #: ``family`` as one discriminated union (``genoserve.runtime.contracts``), each family's
    #: block with its rules, together with the family's rules for the ports.
    preprocessing: dict[str, Any] = {}
    batching: BatchingSpec = BatchingSpec()
    cpu_serving: CpuServingSpec | None = None
    versions: tuple[VersionSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ModelSpec:
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise ValueError("input and output names must be unique")
        versions = [v.version for v in self.versions]
        if len(set(versions)) != len(versions):
            raise ValueError("versions must be unique")
        return self

    def version(self, number: int) -> VersionSpec:
        for v in self.versions:
            if v.version == number:
                return v
        raise KeyError(number)
