"""Checks a request's arrays against a model's declared inputs before they may join a batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from genoserve.core.errors import FieldViolation, InvalidArgument
from genoserve.runtime.spec import ModelSpec

Array = np.ndarray[Any, Any]


def check_inputs(spec: ModelSpec, inputs: Mapping[str, Array], field: str = "inputs") -> int:
    """Validate names, dtypes, ranks, fixed dims and a shared batch size; return the batch size.

    Raises ``InvalidArgument`` listing every violation, each naming ``field[<input>]`` and the rule.
    """
    violations: list[FieldViolation] = []
    declared = {t.name: t for t in spec.inputs}
    for name in inputs:
        if name not in declared:
            violations.append(
                FieldViolation(
                    f"{field}[{name}]", f"model {spec.name} has no input {name!r}; its inputs are {sorted(declared)}"
                )
            )
    batch_sizes: dict[str, int] = {}
    for name, tensor in declared.items():
        where = f"{field}[{name}]"
        array = inputs.get(name)
        if array is None:
            violations.append(FieldViolation(where, "required input is missing"))
            continue
        if array.dtype != tensor.numpy_dtype:
            violations.append(FieldViolation(where, f"dtype must be {tensor.dtype}, got {array.dtype.name}"))
        if array.ndim != len(tensor.shape):
            violations.append(
                FieldViolation(
                    where,
                    f"rank must be {len(tensor.shape)} (shape {list(tensor.shape)}), got shape {list(array.shape)}",
                )
            )
            continue
        for axis, (want, have) in enumerate(zip(tensor.shape, array.shape, strict=True)):
            if want != -1 and want != have:
                violations.append(FieldViolation(where, f"dimension {axis} must be {want}, got {have}"))
        if array.shape[0] < 1:
            violations.append(FieldViolation(where, "batch dimension must be at least 1"))
        batch_sizes[name] = array.shape[0]
    if len(set(batch_sizes.values())) > 1:
        violations.append(FieldViolation(field, f"inputs must share the batch dimension, got {batch_sizes}"))
    if violations:
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in violations), violations)
    return next(iter(batch_sizes.values()))
