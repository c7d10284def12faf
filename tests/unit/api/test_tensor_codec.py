"""Tensor codec: raw little-endian bytes round-trip every dtype; bad tensors name the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from genoserve.api.codecs import tensor as codec
from genoserve.core.errors import InvalidArgument
from genoserve.runtime.spec import DTYPES
from genoserve.v1 import tensor_pb2


@given(
    array=st.sampled_from(sorted(DTYPES)).flatmap(
        lambda name: hnp.arrays(DTYPES[name][0], hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    )
)
def test_round_trip_every_dtype_and_shape(array: npt.NDArray[Any]) -> None:
    decoded = codec.to_numpy(codec.from_numpy(array), "t")
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_big_endian_and_strided_arrays_are_sent_little_endian_c_order() -> None:
    array = np.arange(12, dtype=">i4").reshape(3, 4).T
    tensor = codec.from_numpy(array)
    assert tensor.data == np.ascontiguousarray(array, dtype="<i4").tobytes()
    np.testing.assert_array_equal(codec.to_numpy(tensor, "t"), array)


def test_decode_is_zero_copy_view() -> None:
    tensor = codec.from_numpy(np.zeros((4, 4), dtype=np.float32))
    assert not codec.to_numpy(tensor, "t").flags.owndata


def test_wrong_byte_count_names_field_and_rule() -> None:
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2, 3], data=b"\0" * 20)
    with pytest.raises(InvalidArgument) as info:
        codec.map_to_numpy({"x": tensor}, "inputs")
    [violation] = info.value.violations
    assert violation.field == "inputs[x].data"
    assert "20 bytes" in violation.description
    assert "needs 24" in violation.description


def test_unspecified_dtype_and_negative_dims_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"t\.dtype"):
        codec.to_numpy(tensor_pb2.Tensor(shape=[1], data=b"\0" * 4), "t")
    with pytest.raises(InvalidArgument, match=r"t\.shape"):
        codec.to_numpy(tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=[-1], data=b""), "t")


@pytest.mark.parametrize(
    ("shape", "rule"),
    [
        ([1] * 33, "at most 32 dimensions, got 33"),
        ([1] * 100_000, "at most 32 dimensions, got 100000"),
        ([0, 2**62, 2**62], "too large"),
        ([0, 2**31, 2**31], "too large"),  # 2**62 float32 values: 2**64 bytes
        ([2**62, 4, 0], "too large"),
    ],
)
def test_shapes_no_array_can_have_are_refused_before_any_arithmetic(shape: list[int], rule: str) -> None:
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=shape, data=b"")
    with pytest.raises(InvalidArgument, match=rule) as info:
        codec.to_numpy(tensor, "inputs[x]")
    [violation] = info.value.violations
    assert violation.field == "inputs[x].shape"
    assert len(info.value.message) < 400


def test_empty_tensors_with_large_but_possible_dims_decode() -> None:
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=[0, 2**40, 2**20], data=b"")
    assert codec.to_numpy(tensor, "t").shape == (0, 2**40, 2**20)
    assert (
        codec.to_numpy(tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=[1] * 32, data=b"\0"), "t").size == 1
    )


def test_a_huge_input_name_is_cut_in_the_field_it_names() -> None:
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2], data=b"")
    with pytest.raises(InvalidArgument) as info:
        codec.map_to_numpy({"n" * 100_000: tensor}, "inputs")
    [violation] = info.value.violations
    assert violation.field.startswith("inputs['nnnn")
    assert "(100000 characters)" in violation.field
    assert len(info.value.message) < 400
