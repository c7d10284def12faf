"""TFRecord files without TensorFlow: a reader (and a writer, for tests and fixtures).

Framing of each record (TensorFlow's "TFRecord" format, documented at
https://www.tensorflow.org/tutorials/load_data/tfrecord#tfrecords_format_details)::

    uint64 length                      little-endian
    uint32 masked_crc32c(length)       of the 8 length bytes
    byte   data[length]
    uint32 masked_crc32c(data)

    masked_crc(x) = ((crc(x) >> 15) | (crc(x) << 17)) + 0xa282ead8   (mod 2**32)

where crc is CRC-32C (Castagnoli, reflected polynomial 0x82F63B78). Files may be gzip-compressed
as a whole (DeepVariant writes ``*.tfrecord.gz``); the reader detects gzip by its magic bytes.

CRC-32C here is pure numpy: the data is cut into equal lanes whose CRCs advance together, one
byte column per numpy step, and the lane CRCs are then combined with a precomputed "append L zero
bytes" linear map (CRC is linear over GF(2)). Small inputs use a plain table loop.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt

from genoserve.core.errors import InvalidArgument

_POLY = 0x82F63B78  # CRC-32C, reflected
_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_GZIP_MAGIC = b"\x1f\x8b"
#: Inputs shorter than this use the scalar table loop (the lane set-up costs more than it saves).
_SCALAR_LIMIT = 4096
_LANES = 1024


class RecordError(InvalidArgument):
    """A TFRecord file is corrupt: a CRC mismatch, a truncated record or a broken gzip stream."""

    def __init__(self, path: str | Path, index: int, offset: int, rule: str) -> None:
        field = f"{path}: record {index} (byte offset {offset})"
        super().__init__(f"{field}: {rule}")
        self.path = str(path)
        self.index = index
        self.offset = offset


def _make_table() -> npt.NDArray[np.uint32]:
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table[byte] = crc
    return table


_TABLE = _make_table()
_TABLE_LIST: list[int] = [int(x) for x in _TABLE]


def _scalar_update(crc: int, data: bytes | memoryview) -> int:
    table = _TABLE_LIST
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


_ShiftTables = tuple[list[int], list[int], list[int], list[int]]


def _advance_zeros(states: npt.NDArray[np.uint32], n_bytes: int) -> npt.NDArray[np.uint32]:
    """Registers after feeding ``n_bytes`` zero bytes (no init, no final xor), vectorised."""
    out = states.copy()
    for _ in range(n_bytes):
        out = _TABLE[out & 0xFF] ^ (out >> 8)
    return out


def _tables_from_columns(columns: npt.NDArray[np.uint32]) -> _ShiftTables:
    """Byte-sliced lookup tables of the GF(2)-linear map whose image of bit ``i`` is ``columns[i]``."""
    values = np.arange(256, dtype=np.uint32)
    tables: list[list[int]] = []
    for k in range(4):
        table = np.zeros(256, dtype=np.uint32)
        for bit in range(8):
            table ^= np.where((values >> bit) & 1 == 1, columns[8 * k + bit], np.uint32(0))
        tables.append(table.tolist())
    return tables[0], tables[1], tables[2], tables[3]


def _apply(tables: _ShiftTables, value: int) -> int:
    t0, t1, t2, t3 = tables
    return t0[value & 0xFF] ^ t1[(value >> 8) & 0xFF] ^ t2[(value >> 16) & 0xFF] ^ t3[value >> 24]


_UNIT_COLUMNS = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))


@lru_cache(maxsize=64)
def _zero_shift_tables_pow2(n_bytes: int) -> _ShiftTables:
    """The map "append ``n_bytes`` zero bytes" for a power of two, by squaring the half map."""
    if n_bytes == 1:
        return _tables_from_columns(_advance_zeros(_UNIT_COLUMNS, 1))
    half = _zero_shift_tables_pow2(n_bytes // 2)
    columns = np.array([_apply(half, _apply(half, 1 << bit)) for bit in range(32)], dtype=np.uint32)
    return _tables_from_columns(columns)


@lru_cache(maxsize=16)
def _zero_shift_tables(n_bytes: int) -> _ShiftTables:
    """The map "append ``n_bytes`` zero bytes" for any length (a product of power-of-two maps)."""
    return _tables_from_columns(np.array([_shift_register(1 << bit, n_bytes) for bit in range(32)], dtype=np.uint32))


def _shift_register(register: int, n_bytes: int) -> int:
    """``register`` after ``n_bytes`` zero bytes."""
    step = 1
    while n_bytes:
        if n_bytes & 1:
            register = _apply(_zero_shift_tables_pow2(step), register)
        n_bytes >>= 1
        step <<= 1
    return register


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of ``data`` (standard: init and final xor 0xFFFFFFFF); ``crc`` continues a previous one."""
    view = memoryview(data).cast("B")
    n = len(view)
    register = crc ^ 0xFFFFFFFF
    if n < _SCALAR_LIMIT:
        return _scalar_update(register, view) ^ 0xFFFFFFFF
    width = -(-n // _LANES)  # bytes per lane
    pad = _LANES * width - n
    buf = np.zeros(_LANES * width, dtype=np.uint8)
    buf[pad:] = np.frombuffer(view, dtype=np.uint8)
    # Leading zero bytes leave a zero register unchanged, so the padded raw CRC equals the data's.
    columns = np.ascontiguousarray(buf.reshape(_LANES, width).T).astype(np.uint32)
    state = np.zeros(_LANES, dtype=np.uint32)
    table = _TABLE
    for j in range(width):
        state = table[(state ^ columns[j]) & 0xFF] ^ (state >> 8)
    # Horner over the lanes: each earlier lane is followed by `width` more bytes per later lane.
    t0, t1, t2, t3 = _zero_shift_tables(width)
    raw = 0
    for lane_crc in state.tolist():
        raw = t0[raw & 0xFF] ^ t1[(raw >> 8) & 0xFF] ^ t2[(raw >> 16) & 0xFF] ^ t3[raw >> 24] ^ lane_crc
    # CRC is linear: the initial register contributes its image after n zero bytes.
    return raw ^ _shift_register(register, n) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_records(path: str | Path, *, verify: bool = True) -> Iterator[bytes]:
    """Yield each record's data in order; ``verify`` checks both CRCs of every record.

    Raises ``RecordError`` (INVALID_ARGUMENT) naming the file, the record index and its byte offset
    in the (uncompressed) stream for a CRC mismatch, a truncated record or a corrupt gzip stream.
    """
    path = Path(path)
    index = 0
    offset = 0
    with _open(path) as stream:
        while True:
            try:
                header = _read_exactly(stream, _HEADER.size)
                if not header:
                    return
                if len(header) < _HEADER.size:
                    raise RecordError(path, index, offset, f"truncated: {len(header)} of 12 header bytes")
                length, length_crc = _HEADER.unpack(header)
                if verify and masked_crc32c(header[:8]) != length_crc:
                    raise RecordError(path, index, offset, "length CRC mismatch (corrupt file or not a TFRecord)")
                body = _read_exactly(stream, length + _FOOTER.size)
            except (EOFError, OSError, zlib.error) as exc:
                raise RecordError(path, index, offset, f"unreadable compressed stream: {exc}") from exc
            if len(body) < length + _FOOTER.size:
                raise RecordError(
                    path, index, offset, f"truncated: {len(body)} of {length + _FOOTER.size} data+CRC bytes"
                )
            data = body[:length]
            if verify:
                (data_crc,) = _FOOTER.unpack_from(body, length)
                if masked_crc32c(data) != data_crc:
                    raise RecordError(path, index, offset, "data CRC mismatch")
            yield data
            index += 1
            offset += _HEADER.size + length + _FOOTER.size


def encode_record(data: bytes) -> bytes:
    """One framed record: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + _FOOTER.pack(masked_crc32c(length)) + data + _FOOTER.pack(masked_crc32c(data))


def write_records(path: str | Path, records: Iterable[bytes], *, compress: bool | None = None) -> int:
    """Write ``records`` as a TFRecord file (gzip when ``compress`` or, by default, a ``.gz`` name).

    Returns the number of records written.
    """
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    count = 0
    with gzip.open(path, "wb") if compress else open(path, "wb") as out:
        for data in records:
            out.write(encode_record(data))
            count += 1
    return count
