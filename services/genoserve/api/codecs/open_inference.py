"""Open Inference Protocol (KServe v2 / Triton) tensors <-> numpy.

Datatype names and the rules for ``raw_input_contents`` / ``contents`` are the protocol's (KServe
"Open Inference Protocol", tensor data types; Triton grpc_service.proto): raw contents are the
little-endian, row-major bytes of each input in the order of ``inputs``; FP16 exists only raw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from genoserve.api.codecs.tensor import check_shape
from genoserve.core.errors import InvalidArgument, quoted
from genoserve.inference import open_inference_pb2 as oip
from genoserve.runtime.spec import DTYPES, TensorSpec

Array = np.ndarray[Any, Any]

#: genoserve dtype name (model.yaml) -> protocol datatype
DATATYPE = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}  # fmt: skip
_DTYPE = {v: k for k, v in DATATYPE.items()}
#: The typed ``contents`` field that holds each datatype (FP16: raw only).
_CONTENTS = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}  # fmt: skip
_ALL_CONTENTS = sorted(set(_CONTENTS.values()) | {"bytes_contents"})


def tensor_metadata(spec: TensorSpec) -> oip.ModelMetadataResponse.TensorMetadata:
    return oip.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=DATATYPE[spec.dtype], shape=list(spec.shape)
    )


def _one_input(tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None, field: str) -> Array:
    name = _DTYPE.get(tensor.datatype)
    if name is None:
        known = sorted(_DTYPE)
        raise InvalidArgument.field(f"{field}.datatype", f"must be one of {known}, got {quoted(tensor.datatype)}")
    dtype = DTYPES[name][0]
    shape = check_shape(tensor.shape, dtype.itemsize, f"{field}.shape")
    count = math.prod(shape)
    filled = [f for f in _ALL_CONTENTS if len(getattr(tensor.contents, f))]
    if raw is not None:
        if filled:
            raise InvalidArgument.field(f"{field}.contents", "must be empty when raw_input_contents is given")
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument.field(
                f"{field}.raw_input_contents",
                f"has {len(raw)} bytes; shape {list(shape)} of {tensor.datatype} needs {count * dtype.itemsize}",
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    wanted = _CONTENTS.get(tensor.datatype)
    if wanted is None:
        raise InvalidArgument.field(f"{field}.contents", f"{tensor.datatype} data must be sent in raw_input_contents")
    if filled and filled != [wanted]:
        raise InvalidArgument.field(f"{field}.contents", f"{tensor.datatype} data goes in {wanted}, got {filled}")
    values = getattr(tensor.contents, wanted)
    if len(values) != count:
        raise InvalidArgument.field(
            f"{field}.contents.{wanted}", f"has {len(values)} values; shape {list(shape)} needs {count}"
        )
    return np.asarray(values, dtype=dtype).reshape(shape)


def inputs(request: oip.ModelInferRequest) -> dict[str, Array]:
    """The request's inputs by name; INVALID_ARGUMENT naming the input and the rule broken."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument.field(
            "raw_input_contents", f"has {len(raw)} entries for {len(request.inputs)} inputs (one per input, in order)"
        )
    arrays: dict[str, Array] = {}
    for i, tensor in enumerate(request.inputs):
        field = f"inputs[{i}]"
        if not tensor.name:
            raise InvalidArgument.field(f"{field}.name", "is required")
        if tensor.name in arrays:
            raise InvalidArgument.field(f"{field}.name", f"{quoted(tensor.name)} is given twice")
        arrays[tensor.name] = _one_input(tensor, raw[i] if raw else None, f"inputs[{quoted(tensor.name)}]")
    return arrays


def requested(request: oip.ModelInferRequest, available: list[str]) -> list[str]:
    """The outputs to return, in the order asked (all, in the model's order, when none is)."""
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InvalidArgument.field("outputs", f"the model has no output {unknown}; its outputs: {available}")
    return names or available


def response(
    model: str, version: str, request_id: str, outputs: Mapping[str, Array], names: list[str]
) -> oip.ModelInferResponse:
    """Outputs as raw little-endian contents, in the order of ``names``."""
    message = oip.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for name in names:
        array = outputs[name]
        dtype = DTYPES[array.dtype.name][0]
        data = np.ascontiguousarray(array, dtype=dtype)
        message.outputs.add(name=name, datatype=DATATYPE[array.dtype.name], shape=data.shape)
        message.raw_output_contents.append(data.tobytes())
    return message
