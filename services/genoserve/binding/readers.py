"""FASTA and BED readers that can start at a byte offset (plain files) or skip records (gzip).

Pure Python; each yields ``(record index, line number, ...)`` so that errors name the record.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO


def _open(path: Path) -> IO[bytes]:  # a GzipFile or a plain binary file
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == b"\x1f\x8b"


@dataclass(frozen=True)
class FastaRecord:
    index: int
    line: int
    id: str
    bases: str


def fasta_offsets(path: Path, every: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Count records; return (count, [(first record, byte offset, line number)] every ``every``)."""
    count, marks, offset, line = 0, [], 0, 0
    with _open(path) as fh:
        for raw in fh:
            line += 1
            if raw.startswith(b">"):
                if count % every == 0:
                    marks.append((count, offset, line))
                count += 1
            offset += len(raw)
    return count, marks


class FastaFormatError(ValueError):
    def __init__(self, line: int, rule: str) -> None:
        super().__init__(f"line {line}: {rule}")
        self.line = line
        self.rule = rule


def _fasta_id(raw: bytes) -> str:
    fields = raw[1:].split(maxsplit=1)
    return fields[0].decode("utf-8", errors="replace") if fields else ""


def read_fasta(path: Path, start: int, stop: int, offset: int, first_line: int) -> Iterator[FastaRecord]:
    """Records ``[start, stop)``. Plain files seek to ``offset`` (where record ``start`` begins, on
    line ``first_line``); gzip files are read from the beginning, skipping earlier records."""
    gz = is_gzip(path)
    with _open(path) as fh:
        if gz:
            index, line = -1, 0
        else:
            fh.seek(offset)
            index, line = start - 1, first_line - 1
        current: tuple[int, int, str] | None = None
        chunks: list[str] = []
        for raw in fh:
            line += 1
            if raw[:1] == b">":
                if current is not None and current[0] >= start:
                    yield FastaRecord(current[0], current[1], current[2], "".join(chunks))
                index += 1
                if index >= stop:
                    return
                current, chunks = (index, line, _fasta_id(raw)), []
            elif current is not None:
                if current[0] >= start:
                    chunks.append(raw.decode("latin-1").strip())
            elif raw.strip():
                raise FastaFormatError(line, "sequence data before the first '>' header")
        if current is not None and start <= current[0] < stop:
            yield FastaRecord(current[0], current[1], current[2], "".join(chunks))


@dataclass(frozen=True)
class FastaBlock:
    """Records ``[start, start + len(ids))`` as columns; ``lines[i]`` is record i's header line."""

    start: int
    ids: list[str]
    bases: list[str]
    lines: list[int]

    def records(self) -> list[FastaRecord]:
        return [
            FastaRecord(self.start + i, line, id_, bases)
            for i, (id_, bases, line) in enumerate(zip(self.ids, self.bases, self.lines, strict=True))
        ]


def read_fasta_block(path: Path, start: int, stop: int, offset: int, first_line: int) -> FastaBlock:
    """``read_fasta``'s records as columns, fast for the common layout of a plain file: one header
    line and one sequence line per record. Those lines are taken in C (``islice`` over the file)
    and checked; anything else (wrapped sequences, blank lines, gzip) goes through ``read_fasta``."""
    count = stop - start
    lines: list[bytes] = []
    after = b""
    if count > 0 and not is_gzip(path):
        with open(path, "rb") as fh:
            fh.seek(offset)
            lines = list(itertools.islice(fh, 2 * count))
            after = fh.readline()  # must start the next record (or be the end): else the last one wraps
    heads, seqs = lines[0::2], lines[1::2]
    simple = (
        count > 0
        and len(lines) == 2 * count
        and (not after or after[:1] == b">")
        and all(h[:1] == b">" for h in heads)
        and not any(q[:1] in (b">", b"\n", b"\r") for q in seqs)
    )
    if not simple:
        records = list(read_fasta(path, start, stop, offset, first_line))
        return FastaBlock(start, [r.id for r in records], [r.bases for r in records], [r.line for r in records])
    return FastaBlock(
        start,
        [(h[1:].split(None, 1) or [b""])[0].decode("utf-8", errors="replace") for h in heads],
        [q.decode("latin-1").strip() for q in seqs],
        list(range(first_line, first_line + 2 * count, 2)),
    )


def line_offsets(path: Path, every: int) -> tuple[int, list[tuple[int, int]]]:
    """Count lines; return (count, [(line index, byte offset)] every ``every`` lines)."""
    count, marks, offset = 0, [], 0
    with _open(path) as fh:
        for raw in fh:
            if count % every == 0:
                marks.append((count, offset))
            count += 1
            offset += len(raw)
    return count, marks


def read_lines(path: Path, start: int, stop: int, offset: int) -> Iterator[tuple[int, str]]:
    """(0-based line index, text) for lines ``[start, stop)``; seeks in plain files."""
    gz = is_gzip(path)
    with _open(path) as fh:
        index = 0
        if not gz:
            fh.seek(offset)
            index = start
        for raw in fh:
            if index >= stop:
                return
            if index >= start:
                yield index, raw.decode("utf-8", errors="replace").rstrip("\r\n")
            index += 1
