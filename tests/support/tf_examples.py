"""Edited DeepVariant tf.Examples, for tests of the checks on that path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from genoserve.tfexample import example_pb2
from genoserve.variants.examples import PileupExample, serialize_example


def tf_example(example: PileupExample, edit: Callable[[Any], None] | None = None) -> bytes:
    """``example`` serialized as a tf.Example, its feature map passed to ``edit`` first."""
    message = example_pb2.Example.FromString(serialize_example(example))
    if edit is not None:
        edit(message.features.feature)
    return message.SerializeToString()


def with_shape(shape: list[int], encoded: bytes | None = None) -> Callable[[Any], None]:
    """An edit setting ``image/shape`` (and ``image/encoded`` when given)."""

    def edit(feature: Any) -> None:
        del feature["image/shape"].int64_list.value[:]
        feature["image/shape"].int64_list.value.extend(shape)
        if encoded is not None:
            feature["image/encoded"].bytes_list.value[0] = encoded

    return edit
