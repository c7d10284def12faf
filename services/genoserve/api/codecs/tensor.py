"""genoserve.v1.Tensor <-> numpy: raw little-endian bytes, zero-copy on decode."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from genoserve.core.errors import FieldViolation, InvalidArgument
from genoserve.runtime.spec import DTYPES
from genoserve.v1 import tensor_pb2

Array = np.ndarray[Any, Any]

_TO_PROTO: dict[str, tensor_pb2.DataType.ValueType] = {
    name: tensor_pb2.DataType.Value(f"DATA_TYPE_{name.upper()}") for name in DTYPES
}
_FROM_PROTO: dict[int, str] = {v: k for k, v in _TO_PROTO.items()}


def dtype_to_proto(name: str) -> tensor_pb2.DataType.ValueType:
    return _TO_PROTO[name]


def dtype_from_proto(value: int) -> str:
    return _FROM_PROTO[value]


def to_numpy(tensor: tensor_pb2.Tensor, field: str, data: Any = None) -> Array:
    """Decode one tensor; ``field`` names it in errors (e.g. ``inputs[x]``). Read-only view.

    ``data``: the tensor's bytes when they were kept out of the message (a buffer, see
    ``genoserve.api.codecs.wire``); else ``tensor.data``."""
    name = _FROM_PROTO.get(tensor.dtype)
    if name is None:
        raise InvalidArgument.field(
            f"{field}.dtype", f"must be one of {sorted(_TO_PROTO)}, got enum value {tensor.dtype}"
        )
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument.field(f"{field}.shape", f"dimensions must be >= 0, got {list(shape)}")
    dtype = DTYPES[name][0]
    expected = math.prod(shape) * dtype.itemsize
    if data is None:
        data = tensor.data  # each attribute read copies the bytes out of the message (upb): read once
    if len(data) != expected:
        raise InvalidArgument.field(
            f"{field}.data",
            f"has {len(data)} bytes; shape {list(shape)} of {name} needs {expected}",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def from_numpy(array: Array) -> tensor_pb2.Tensor:
    """Encode an array (any byte order or layout) as little-endian C-order bytes."""
    name = array.dtype.name
    if name not in DTYPES:
        raise TypeError(f"dtype {array.dtype} has no genoserve.v1.DataType")
    wire = array.astype(DTYPES[name][0], order="C", copy=False)  # keeps 0-d shapes, unlike ascontiguousarray
    return tensor_pb2.Tensor(dtype=_TO_PROTO[name], shape=wire.shape, data=wire.tobytes())


def fill(tensor: tensor_pb2.Tensor, array: Array) -> tensor_pb2.Tensor:
    """``from_numpy`` into an existing (e.g. nested) message: building a Tensor and copying it
    into its parent would copy the payload once more."""
    name = array.dtype.name
    if name not in DTYPES:
        raise TypeError(f"dtype {array.dtype} has no genoserve.v1.DataType")
    wire = array.astype(DTYPES[name][0], order="C", copy=False)
    tensor.dtype = _TO_PROTO[name]
    tensor.shape[:] = wire.shape
    tensor.data = wire.tobytes()
    return tensor


def map_to_numpy(tensors: Mapping[str, tensor_pb2.Tensor], field: str) -> dict[str, Array]:
    """Decode a ``map<string, Tensor>``, collecting every bad entry into one InvalidArgument."""
    out: dict[str, Array] = {}
    violations: list[FieldViolation] = []
    for name, tensor in tensors.items():
        try:
            out[name] = to_numpy(tensor, f"{field}[{name}]")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    if violations:
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in violations), violations)
    return out
