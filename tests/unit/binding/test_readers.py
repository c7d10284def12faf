"""The fast FASTA block reader gives exactly what the general reader gives, on every layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from genoserve.binding.readers import fasta_offsets, read_fasta, read_fasta_block

LAYOUTS = {
    "one line per record": ">a x\nACGT\n>b\nGGCC\n>c\nTTAA\n>d\nCAGT\n",
    "no final newline": ">a\nACGT\n>b\nGGCC\n>c\nTTAA\n>d\nCAGT",
    "wrapped record": ">a\nACGT\n>b\nGG\nCC\n>c\nTTAA\n>d\nCAGT\n",
    "last record of a block wrapped": ">a\nACGT\n>b\nGGCC\nAA\n>c\nTTAA\n>d\nCAGT\n",
    "blank line": ">a\nACGT\n\n>b\nGGCC\n>c\nTTAA\n>d\nCAGT\n",
    "windows line ends": ">a\r\nACGT\r\n>b\r\nGGCC\r\n>c\r\nTTAA\r\n>d\r\nCAGT\r\n",
    "empty sequence": ">a\n>b\nGGCC\n>c\nTTAA\n>d\nCAGT\n",
}


@pytest.mark.parametrize("text", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("every", [1, 2, 3, 4])
def test_block_reader_matches_the_general_reader(tmp_path: Path, text: str, every: int) -> None:
    path = tmp_path / "x.fa"
    path.write_bytes(text.encode())
    count, marks = fasta_offsets(path, every)
    assert count == 4
    for first, offset, line in marks:
        stop = min(first + every, count)
        expected = list(read_fasta(path, first, stop, offset, line))
        assert read_fasta_block(path, first, stop, offset, line).records() == expected
        assert [r.index for r in expected] == list(range(first, stop))
