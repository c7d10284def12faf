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
