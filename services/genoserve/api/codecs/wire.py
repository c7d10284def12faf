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

from collections.abc import Collection, Iterable, Iterator, Sequence
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


def _fields(view: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """``(number, field start, payload start, end)`` of each field in turn (payload start is -1
    unless the field is length-delimited). ValueError on anything but a plain encoding."""
    pos = 0
    while pos < len(view):
        start = pos
        tag, pos = _varint(view, pos)
        wire, begin = tag & 7, -1
        if wire == 0:
            _, pos = _varint(view, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == _LENGTH_DELIMITED:
            length, begin = _varint(view, pos)
            pos = begin + length
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(view):
            raise ValueError("truncated field")
        yield tag >> 3, start, begin, pos


def _without(data: Any, view: memoryview, spans: list[tuple[int, int]]) -> bytes:
    """``data`` minus the byte ranges ``spans`` (sorted, disjoint), one copy of what is left."""
    if not spans:
        return data if isinstance(data, bytes) else bytes(view)  # no copy of a bytes message
    edges = [0, *(e for span in spans for e in span), len(view)]
    return b"".join(view[edges[i] : edges[i + 1]] for i in range(0, len(edges), 2))


def take_fields(data: Any, numbers: Collection[int]) -> tuple[bytes, dict[int, memoryview]] | None:
    """``(the other fields' bytes, {number: payload})`` of an encoded message: the length-delimited
    fields ``numbers`` taken out, each payload a zero-copy view of ``data``; a number absent from
    the message is absent from the dict. Only the rest is copied (not at all when nothing is
    taken from a ``bytes`` message). None when the encoding is anything but plain (or a taken
    field is present twice): parse it with protobuf instead. Scans every field: for small
    messages (see ``take_first`` for ones with long repeated fields)."""
    view = memoryview(data).cast("B")
    found: dict[int, tuple[int, int, int]] = {}
    try:
        for number, start, begin, end in _fields(view):
            if number in numbers and begin >= 0:
                if number in found:
                    return None
                found[number] = (start, begin, end)
    except ValueError:
        return None
    rest = _without(data, view, sorted((start, end) for start, _, end in found.values()))
    return rest, {number: view[begin:end] for number, (_, begin, end) in found.items()}


def take_first(data: Any, numbers: Collection[int]) -> tuple[bytes, int, memoryview] | tuple[bytes, None, None] | None:
    """``(the other fields' bytes, number, payload)`` for the first length-delimited field of
    ``numbers`` in the message, its payload a zero-copy view; ``(data, None, None)`` when there is
    none. The scan stops at that field, so a sender that writes it first (genoserve's client
    does) pays nothing for long repeated fields after it. Whether the rest holds one of
    ``numbers`` again is the caller's check (parse the rest and look): then protobuf's merge
    rules apply and the whole message must go to protobuf. None: not a plain encoding."""
    view = memoryview(data).cast("B")
    try:
        for number, start, begin, end in _fields(view):
            if number in numbers and begin >= 0:
                return _without(data, view, [(start, end)]), number, view[begin:end]
    except ValueError:
        return None
    return (data if isinstance(data, bytes) else bytes(view)), None, None


def split_field(data: Any, number: int) -> tuple[bytes, memoryview | None] | None:
    """``take_fields`` for one field: ``(the other fields' bytes, its payload or None)``."""
    taken = take_fields(data, (number,))
    if taken is None:
        return None
    rest, payloads = taken
    return rest, payloads.get(number)


def length(parts: Iterable[Any]) -> int:
    """Bytes in ``parts`` (bytes or C-contiguous buffers such as numpy arrays)."""
    return sum(memoryview(p).nbytes for p in parts)


def field(number: int, parts: Sequence[Any]) -> list[Any]:
    """Length-delimited field ``number`` whose payload is ``parts``, as parts (nothing copied):
    nest them to build messages inside messages, join them once at the end."""
    return [field_header(number, length(parts)), *parts]


def join_fields(head: bytes, number: int, parts: Iterable[Any], length: int) -> bytes:
    """``head`` followed by length-delimited field ``number`` whose payload is ``parts`` (buffers,
    ``length`` bytes in all), built with one copy of the parts."""
    return b"".join([head, field_header(number, length), *parts])
