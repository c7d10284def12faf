"""genoserve.v1.Tensor <-> numpy: raw little-endian bytes, zero-copy on decode."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from genoserve.api.codecs import wire
from genoserve.core.errors import QUOTED_CHARS, FieldViolation, InvalidArgument, quoted
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


class RegionReader(Protocol):
    """Reads tensors clients left in shared memory (``genoserve.api.shared_memory``)."""

    def read(self, region: tensor_pb2.SharedMemoryRegion, nbytes: int, field: str) -> Any: ...


#: What servers without shared memory do with a Tensor.shared_memory (see ``to_numpy``).
NO_SHARED_MEMORY = (
    "the tensor is in shared memory, but this server does not read shared memory "
    "(its server.shared_memory setting is off), so send data"
)


def to_numpy(tensor: tensor_pb2.Tensor, field: str, data: Any = None, shared: RegionReader | None = None) -> Array:
    """Decode one tensor; ``field`` names it in errors (e.g. ``inputs[x]``). Read-only view.

    ``data``: the tensor's bytes when they were kept out of the message (a buffer, see
    ``genoserve.api.codecs.wire``); else ``tensor.data``. A tensor in shared memory is read
    through ``shared`` (None: refused with InvalidArgument)."""
    name = _FROM_PROTO.get(tensor.dtype)
    if name is None:
        raise InvalidArgument.field(
            f"{field}.dtype", f"must be one of {sorted(_TO_PROTO)}, got enum value {tensor.dtype}"
        )
    dtype = DTYPES[name][0]
    shape = check_shape(tensor.shape, dtype.itemsize, f"{field}.shape")
    expected = math.prod(shape) * dtype.itemsize
    if data is None:
        data = tensor.data  # each attribute read copies the bytes out of the message (upb): read once
    if tensor.HasField("shared_memory"):
        if len(data):
            raise InvalidArgument.field(f"{field}.data", "must be empty when shared_memory is set (give one)")
        if shared is None:
            raise InvalidArgument.field(f"{field}.shared_memory", NO_SHARED_MEMORY)
        data = shared.read(tensor.shared_memory, expected, f"{field}.shared_memory")
    if len(data) != expected:
        raise InvalidArgument.field(
            f"{field}.data",
            f"has {len(data)} bytes; shape {list(shape)} of {name} needs {expected}",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


#: Most dimensions a Tensor may have (numpy's own limit is 32 in numpy 1, 64 in numpy 2).
MAX_RANK = 32
#: Most bytes an array may describe, zero dimensions aside (numpy: its size in bytes must fit in
#: a signed 64-bit integer, even when another dimension is 0).
_MAX_NBYTES = 2**63 - 1


def check_shape(dims: Sequence[int], itemsize: int, field: str) -> tuple[int, ...]:
    """A Tensor's shape as a tuple, or InvalidArgument (naming ``field``) when no array can have
    it: more than ``MAX_RANK`` dimensions, a negative one, or so many elements (zeros aside) that
    their bytes do not fit in an int64. Checked before any arithmetic or allocation on it."""
    if len(dims) > MAX_RANK:
        raise InvalidArgument.field(field, f"at most {MAX_RANK} dimensions, got {len(dims)}")
    shape = tuple(dims)
    if any(d < 0 for d in shape):
        raise InvalidArgument.field(field, f"dimensions must be >= 0, got {list(shape)}")
    nonzero = math.prod(d for d in shape if d) * itemsize
    if nonzero > _MAX_NBYTES:
        raise InvalidArgument.field(
            field, f"{list(shape)} is too large: its dimensions (zeros aside) describe {nonzero} bytes, "
            f"more than any array can hold (2**63 - 1)"
        )  # fmt: skip
    return shape


class Placer(Protocol):
    """Puts an array's bytes into shared memory for a request (``genoserve.client.shared_memory``)."""

    def place(self, parts: Sequence[Array]) -> tensor_pb2.SharedMemoryRegion:
        """Writes the C-contiguous ``parts`` one after another; where they start."""
        ...


def from_numpy(array: Array, shared: Placer | None = None) -> tensor_pb2.Tensor:
    """Encode an array (any byte order or layout) as little-endian C-order bytes, or, with
    ``shared``, as a reference to those bytes placed in shared memory."""
    name, data = _wire_array(array)
    if shared is not None:
        return tensor_pb2.Tensor(dtype=_TO_PROTO[name], shape=data.shape, shared_memory=shared.place([data]))
    return tensor_pb2.Tensor(dtype=_TO_PROTO[name], shape=data.shape, data=data.tobytes())


def fill(tensor: tensor_pb2.Tensor, array: Array) -> tensor_pb2.Tensor:
    """``from_numpy`` into an existing (e.g. nested) message: building a Tensor and copying it
    into its parent would copy the payload once more."""
    name, data = _wire_array(array)
    tensor.dtype = _TO_PROTO[name]
    tensor.shape[:] = data.shape
    tensor.data = data.tobytes()
    return tensor


def _wire_array(array: Array) -> tuple[str, Array]:
    name = array.dtype.name
    if name not in DTYPES:
        raise TypeError(f"dtype {array.dtype} has no genoserve.v1.DataType")
    return name, array.astype(DTYPES[name][0], order="C", copy=False)  # keeps 0-d shapes


def tensor_parts(array: Array, shared: Placer | None = None) -> list[Any]:
    """A Tensor message's encoding as parts for ``wire.field`` (the array's memory itself, not a
    copy, when it is already little-endian and C-ordered): ``b"".join`` copies it once. With
    ``shared``, the bytes go to shared memory and the message only points at them."""
    if shared is not None:
        return [from_numpy(array, shared).SerializeToString()]
    name, data = _wire_array(array)
    header = tensor_pb2.Tensor(dtype=_TO_PROTO[name], shape=data.shape).SerializeToString()
    return [header, *wire.field(tensor_pb2.Tensor.DATA_FIELD_NUMBER, [data.reshape(-1).view(np.uint8)])]


@dataclass(frozen=True)
class RawTensor:
    """A received Tensor: its message without ``data`` (dtype, shape) and the data apart, as a
    zero-copy view of the received bytes where the encoding allowed."""

    header: tensor_pb2.Tensor
    data: Any

    def decode(self, field: str, shared: RegionReader | None = None) -> Array:
        """``to_numpy`` of the tensor (a read-only view of ``data``, or of shared memory)."""
        return to_numpy(self.header, field, self.data, shared)

    @classmethod
    def of(cls, message: tensor_pb2.Tensor) -> RawTensor:
        return cls(message, message.data)  # one copy out of the message


def raw_tensor(payload: Any) -> RawTensor:
    """The encoded Tensor ``payload`` with its data left in place (protobuf parses the rest)."""
    taken = wire.split_field(payload, tensor_pb2.Tensor.DATA_FIELD_NUMBER)
    if taken is None:  # not plain: protobuf parses it (and reports what is wrong)
        return RawTensor.of(tensor_pb2.Tensor.FromString(bytes(payload)))
    header, data = taken
    return RawTensor(tensor_pb2.Tensor.FromString(header), b"" if data is None else data)


def map_to_numpy(
    tensors: Mapping[str, tensor_pb2.Tensor], field: str, shared: RegionReader | None = None
) -> dict[str, Array]:
    """Decode a ``map<string, Tensor>``, collecting every bad entry into one InvalidArgument."""
    out: dict[str, Array] = {}
    violations: list[FieldViolation] = []
    for name, tensor in tensors.items():
        label = name if len(name) <= QUOTED_CHARS else quoted(name)  # names come from the client
        try:
            out[name] = to_numpy(tensor, f"{field}[{label}]", shared=shared)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    if violations:
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in violations), violations)
    return out
