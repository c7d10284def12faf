"""The CLI prints an error once, in its own words: a server's field names become the command's
flags, and an error raised while streaming a request is reported as itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from genoserve.cli.common import Flags, Guarded, error_lines
from genoserve.core.errors import FieldViolation, InvalidArgument, NotFound, clipped

BINDING = Flags({"crop": "--crop", "reference": "--reference"})
JOBS = Flags({"output_dir": "--output", "inputs": "--input", "crop": "--param crop=true"}, params=True)


def test_one_violation_is_one_line() -> None:
    error = InvalidArgument.field("reference", "no reference genome is registered on the server")
    assert error_lines(error, BINDING) == [
        "error (INVALID_ARGUMENT): --reference: no reference genome is registered on the server"
    ]


def test_joined_violations_are_one_line_each() -> None:
    violations = [FieldViolation("sequences[0].bases", "too long; set crop to centre-crop it"),
                  FieldViolation("sequences[1].bases", "invalid character 'Q'")]  # fmt: skip
    error = InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in violations), violations)
    assert error_lines(error, BINDING) == [
        "error (INVALID_ARGUMENT): sequences[0].bases: too long; pass --crop to centre-crop it",
        "  sequences[1].bases: invalid character 'Q'",
    ]
    many = [FieldViolation(f"sequences[{i}].bases", "x" * 40) for i in range(100)]
    long = InvalidArgument(clipped("; ".join(f"{v.field}: {v.description}" for v in many)), many)
    lines = error_lines(long)
    assert len(lines) == 100
    assert lines[0] == f"error (INVALID_ARGUMENT): sequences[0].bases: {'x' * 40}"


def test_a_message_that_says_more_comes_first_and_is_not_repeated() -> None:
    error = InvalidArgument("message 0: min_gene_overlap: must be within [0, 1]",
                            [FieldViolation("min_gene_overlap", "must be within [0, 1]")])  # fmt: skip
    flags = Flags({"min_gene_overlap": "--min-gene-overlap"})
    [line] = error_lines(error, flags)
    assert line == "error (INVALID_ARGUMENT): message 0: --min-gene-overlap: must be within [0, 1]"
    other = InvalidArgument("2 problems", [FieldViolation("a", "bad"), FieldViolation("b", "worse")])
    assert error_lines(other) == ["error (INVALID_ARGUMENT): 2 problems", "  a: bad", "  b: worse"]
    assert error_lines(NotFound("job 'j1' not found")) == ["error (NOT_FOUND): job 'j1' not found"]


def test_job_fields_are_spelled_as_jobs_submit_takes_them() -> None:
    assert JOBS.spell("params[overwrite]: must be true or false") == "--param overwrite: must be true or false"
    assert JOBS.spell("output_dir: /o/x already exists; pass param overwrite=true to replace it") == (
        "--output: /o/x already exists; pass --param overwrite=true to replace it"
    )
    assert JOBS.spell("inputs[0]: '/x' resolves to /x, outside the allowed roots") == (
        "--input[0]: '/x' resolves to /x, outside the allowed roots"
    )
    record = "/d/a.fa: record 3 ('s', line 7): length 150 exceeds the model's 101; set crop to centre-crop it"
    assert JOBS.spell(record).endswith("; pass --param crop=true to centre-crop it")


def test_words_that_are_not_fields_stay() -> None:
    text = "a reference genome; the setting binding.references; set it with crop_size; no crop here"
    assert BINDING.spell(text) == text


def test_an_error_raised_while_streaming_is_reported_as_itself() -> None:
    def requests() -> Iterator[int]:
        yield 1
        raise InvalidArgument.field("regions", "contig '20' not in the reference")

    stream = Guarded(requests())

    def rpc() -> list[int]:
        seen = list(stream)  # as gRPC consumes it: the stream ends early...
        raise NotFound(f"the server saw {seen}")  # ...and the call fails in its own way

    with pytest.raises(InvalidArgument, match="contig '20' not in the reference"):
        stream.call(rpc)
    quiet = Guarded(iter([1, 2]))
    assert quiet.call(lambda: sum(quiet)) == 3
    with pytest.raises(NotFound):
        quiet.call(lambda: (_ for _ in ()).throw(NotFound("gone")))
