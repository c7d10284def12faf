"""Protobuf wire format around one large ``bytes`` field, so tensors cross without extra copies.

The Python protobuf runtime (upb) copies a ``bytes`` field on parse, on every attribute read, on
assignment and on serialisation: four copies of a 13 MB pileup batch per side. Protobuf's
encoding (https://protobuf.dev/programming-guides/encoding/) lets a message be split around one
length-delimited field: the other fields are parsed (or serialised) by protobuf as usual, and the
large field's payload is a zero-copy ``memoryview`` of the received bytes (or joined once into
the sent bytes). Concatenated encodings of the same message merge, so ``head + field`` is a valid
encoding of the whole message.

Anything unexpected (a group, a truncated varint, the field repeated) makes ``split_field`` return
None, and callers fall back to protobuf's own parser (which then reports the error).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_LENGTH_DELIMITED = 2


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field_header(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited field ``number`` with a ``length``-byte payload."""
    return encode_varint(number << 3 | _LENGTH_DELIMITED) + encode_varint(length)


def split_field(data: Any, number: int) -> tuple[bytes, memoryview | None] | None:
    """``(the other fields' bytes, field number's payload)`` of an encoded message, the payload a
    zero-copy view of ``data``; payload None when the field is absent. None when the encoding is
    anything but plain (or the field is present twice): parse it with protobuf instead."""
    view = memoryview(data).cast("B")
    pos = 0
    found: tuple[int, int, int] | None = None  # field start, payload start, payload end
    try:
        while pos < len(view):
            start = pos
            tag, pos = _varint(view, pos)
            wire = tag & 7
            if wire == 0:
                _, pos = _varint(view, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == _LENGTH_DELIMITED:
                length, pos = _varint(view, pos)
                if tag >> 3 == number:
                    if found is not None:
                        return None
                    found = (start, pos, pos + length)
                pos += length
            else:
                return None
    except ValueError:
        return None
    if pos != len(view):
        return None
    if found is None:
        return (data if isinstance(data, bytes) else bytes(view)), None  # no copy of a bytes message
    start, begin, end = found
    return bytes(view[:start]) + bytes(view[end:]), view[begin:end]


def join_fields(head: bytes, number: int, parts: Iterable[Any], length: int) -> bytes:
    """``head`` followed by length-delimited field ``number`` whose payload is ``parts`` (buffers,
    ``length`` bytes in all), built with one copy of the parts."""
    return b"".join([head, field_header(number, length), *parts])
