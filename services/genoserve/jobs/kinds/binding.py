"""Bulk job kinds of the binding family: score a FASTA, a BED (+ reference), a VCF (+ reference)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BeforeValidator

from genoserve.binding import encoding, strands
from genoserve.binding.contract import BindingContract
from genoserve.binding.encoding import NamedSequence
from genoserve.binding.readers import (
    FastaFormatError,
    fasta_offsets,
    is_gzip,
    line_offsets,
    read_fasta_block,
    read_lines,
)
from genoserve.binding.strands import StrandMode
from genoserve.binding.variants import ReferenceGenome, unknown_reference
from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import Settings
from genoserve.jobs.kinds.base import (
    InputRecordError,
    JobKind,
    PlannedShard,
    ShardContext,
    check_shard_count,
    required_model,
)
from genoserve.jobs.kinds.params import Flag, ModelParams, PositiveInt, choice
from genoserve.jobs.paths import temporary_name
from genoserve.runtime.registry import ModelVersionRecord

Array = np.ndarray[Any, Any]

_references: dict[tuple[str, str], ReferenceGenome] = {}


def reference_for(settings: Settings, name: str, field: str = "params[reference]") -> ReferenceGenome:
    """The named (or default) registered reference genome, opened once per process."""
    name = name or settings.binding.resolved_default
    path = settings.binding.references.get(name)
    if path is None:
        raise InvalidArgument.field(field, unknown_reference(name, settings.binding.references))
    key = (name, str(path))
    if key not in _references:
        _references[key] = ReferenceGenome(name, path)
    return _references[key]


Strand = Annotated[Literal["", "forward", "max", "mean"], BeforeValidator(choice("", "forward", "max", "mean"))]


class BindingParams(ModelParams):
    """Params of the binding kinds."""

    shard_size: PositiveInt = 50_000
    """Records per shard."""
    strand: Strand = ""
    """How a sequence's two strands are scored: forward (as given), max or mean of both; empty: the
    model's default (model.yaml ``preprocessing.default_strand``)."""


class TableParams(BindingParams):
    format: Annotated[Literal["parquet", "tsv"], BeforeValidator(choice("parquet", "tsv"))] = "parquet"
    """Output table format: parquet or tsv."""


class ScoreFastaParams(TableParams):
    """``binding.score_fasta``: score every sequence of FASTA files."""

    crop: Flag = False
    """Centre-crop sequences longer than the model's length (without it such a sequence fails the job)."""


class ScoreBedParams(TableParams):
    """``binding.score_bed``: score the reference window around every BED interval."""

    reference: str = ""
    """A reference genome registered on the server (setting ``binding.references``); empty: the
    server's default reference."""


def _strand(strand: str, contract: BindingContract) -> StrandMode:
    return strand or contract.default_strand  # type: ignore[return-value]


def score_sequences(ctx: ShardContext, sequences: list[str], strand: str) -> tuple[Array, Array]:
    """Fitted sequences -> (logits [n, T], scores [n, T]), ``ctx.batch_size`` sequences per call;
    ``strand`` as the ``strand`` param."""
    contract = ctx.contract_as(BindingContract)
    mode = _strand(strand, contract)
    logits = []
    for i in range(0, len(sequences), ctx.batch_size):
        ctx.check()
        ctx.progress(i)
        batch = encoding.one_hot(sequences[i : i + ctx.batch_size])
        out = ctx.infer({contract.input: strands.with_reverse(batch, mode)})[contract.output]
        logits.append(strands.combine(out, mode))
    joined = np.concatenate(logits) if logits else np.zeros((0, len(contract.tasks)), np.float32)
    return joined, strands.sigmoid(joined)


def _task_columns(contract: BindingContract, logits: Array, scores: Array) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for t, task in enumerate(contract.tasks):
        columns[f"{task}_score"] = pa.array(scores[:, t], pa.float32())
        columns[f"{task}_logit"] = pa.array(logits[:, t], pa.float32())
    return columns


def _write_part(target: Path, columns: Mapping[str, Any]) -> None:
    tmp = temporary_name(target)
    pq.write_table(pa.table(dict(columns)), tmp)
    os.replace(tmp, target)


def _merge_tables(parts: list[Path], final: Path, fmt: str) -> None:
    tmp = temporary_name(final)
    tables = [pq.read_table(p) for p in parts]
    table = pa.concat_tables(tables) if tables else pa.table({})
    if fmt == "tsv":
        with open(tmp, "wb") as fh:
            fh.write(("\t".join(table.column_names) + "\n").encode())
            options = pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False)
            pacsv.write_csv(table, fh, options)
    else:
        pq.write_table(table, tmp)
    os.replace(tmp, final)


T = TypeVar("T", bound=TableParams)


class _TableKind(JobKind[T]):
    """Shared by FASTA and BED: one table per input, parquet (default) or TSV."""

    suffix: ClassVar[str] = ".binding"

    def model(self, params: Mapping[str, str]) -> tuple[str, str]:
        return required_model(self.typed(params), "a binding model, e.g. deepbind-ctcf")

    def outputs(
        self, inputs: list[Path], output_dir: Path, params: Mapping[str, str], roots: Sequence[Path]
    ) -> list[Path]:
        ext = ".tsv" if self.typed(params).format == "tsv" else ".parquet"
        return [output_dir / f"{_stem(p)}{self.suffix}{ext}" for p in inputs]

    def shard_result(self, output_stem: Path) -> Path:
        return output_stem.with_suffix(".parquet")

    def merge(self, inputs: list[Path], shards: list[tuple[PlannedShard, Path]], output_dir: Path,
              params: Mapping[str, str], roots: Sequence[Path]) -> list[Path]:  # fmt: skip
        finals = self.outputs(inputs, output_dir, params, roots)
        for index, final in enumerate(finals):
            _merge_tables([p for s, p in shards if s.input_index == index], final, self.typed(params).format)
        return finals


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".gz", ".bgz", ".fasta", ".fa", ".fna", ".bed", ".vcf"):
        name = name.removesuffix(ext)
    return name


class ScoreFasta(_TableKind[ScoreFastaParams]):
    """FASTA -> a table: id, then ``<task>_score`` and ``<task>_logit`` per task, in input order."""

    name = "binding.score_fasta"
    queue = "binding"
    params_model = ScoreFastaParams

    def plan(self, inputs: list[Path], params: Mapping[str, str], record: ModelVersionRecord,
             settings: Settings) -> list[PlannedShard]:  # fmt: skip
        record.contract_as(BindingContract)
        size = self.typed(params).shard_size
        shards: list[PlannedShard] = []
        for index, path in enumerate(inputs):
            count, marks = fasta_offsets(path, size)
            check_shard_count(len(shards) + len(marks), size, settings, count)
            if count == 0:
                raise InvalidArgument.field(f"inputs[{index}]", f"{path}: no FASTA records ('>' headers)")
            for first, offset, _line in marks:
                stop = min(first + size, count)
                # start/stop are record indices; the line number rides in offset's shard via items
                shards.append(PlannedShard(index, first, stop, stop - first, 0 if is_gzip(path) else offset))
        return shards

    def run_shard(self, ctx: ShardContext) -> int:
        path = ctx.inputs[ctx.input_index]
        contract = ctx.contract_as(BindingContract)
        params = self.typed(ctx.params)
        crop = params.crop
        try:
            # Line numbers count from the shard's first record; made absolute only for an error.
            block = read_fasta_block(path, ctx.start, ctx.stop, ctx.offset, 1)
        except FastaFormatError as exc:
            line = _line_base(path, ctx.offset) + exc.line
            raise InputRecordError(str(path), f"at line {line}", exc.rule) from exc
        ids = block.ids
        fitted = encoding.fit_all(block.bases, contract.length, crop)
        if fitted is None:  # name the first bad record, with its line
            for record in block.records():
                try:
                    encoding.check([NamedSequence(record.id, record.bases)], contract.length, crop)
                except InvalidArgument as bad:
                    line = _line_base(path, ctx.offset) + record.line
                    where = f"{record.index} ({record.id!r}, line {line})"
                    raise InputRecordError(str(path), where, bad.violations[0].description) from bad
            raise AssertionError("a batch failed its check but no record did")
        logits, scores = score_sequences(ctx, fitted, params.strand)
        _write_part(self.shard_result(ctx.output_stem), {"id": pa.array(ids, pa.string()),
                                                         **_task_columns(contract, logits, scores)})  # fmt: skip
        return len(ids)


def _line_base(path: Path, offset: int) -> int:
    """Lines before byte ``offset`` (only computed when an error needs a line number)."""
    if is_gzip(path) or offset == 0:
        return 0
    count = 0
    with open(path, "rb") as fh:
        remaining = offset
        while remaining > 0:
            block = fh.read(min(remaining, 1 << 20))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count


class ScoreBed(_TableKind[ScoreBedParams]):
    """BED + reference -> a table: chrom, start, end, name, task columns. Each interval is scored
    on the model-length window of the reference centred on the interval's midpoint."""

    name = "binding.score_bed"
    queue = "binding"
    params_model = ScoreBedParams

    def plan(self, inputs: list[Path], params: Mapping[str, str], record: ModelVersionRecord,
             settings: Settings) -> list[PlannedShard]:  # fmt: skip
        record.contract_as(BindingContract)
        typed = self.typed(params)
        size = typed.shard_size
        reference_for(settings, typed.reference)
        shards: list[PlannedShard] = []
        for index, path in enumerate(inputs):
            count, marks = line_offsets(path, size)
            check_shard_count(len(shards) + len(marks), size, settings, count)
            if count == 0:
                raise InvalidArgument.field(f"inputs[{index}]", f"{path}: empty BED file")
            shards += [PlannedShard(index, first, min(first + size, count), min(first + size, count) - first,
                                    0 if is_gzip(path) else offset) for first, offset in marks]  # fmt: skip
        return shards

    def run_shard(self, ctx: ShardContext) -> int:
        path = ctx.inputs[ctx.input_index]
        contract = ctx.contract_as(BindingContract)
        params = self.typed(ctx.params)
        reference = reference_for(ctx.settings, params.reference)
        rows: dict[str, list[Any]] = {"chrom": [], "start": [], "end": [], "name": []}
        sequences = []
        for index, text in read_lines(path, ctx.start, ctx.stop, ctx.offset):
            if not text.strip() or text.startswith(("#", "track", "browser")):
                continue
            chrom, start, end, name = _bed_fields(path, index, text, reference)
            middle = (start + end) // 2
            sequences.append(reference.fetch(chrom, middle - contract.length // 2,
                                             middle - contract.length // 2 + contract.length))  # fmt: skip
            for key, value in zip(rows, (chrom, start, end, name), strict=True):
                rows[key].append(value)
        logits, scores = score_sequences(ctx, sequences, params.strand)
        columns = {"chrom": pa.array(rows["chrom"], pa.string()), "start": pa.array(rows["start"], pa.int64()),
                   "end": pa.array(rows["end"], pa.int64()), "name": pa.array(rows["name"], pa.string()),
                   **_task_columns(contract, logits, scores)}  # fmt: skip
        _write_part(self.shard_result(ctx.output_stem), columns)
        return ctx.stop - ctx.start


def _bed_fields(path: Path, index: int, text: str, reference: ReferenceGenome) -> tuple[str, int, int, str]:
    fields = text.split("\t") if "\t" in text else text.split()

    def bad(rule: str) -> InputRecordError:
        return InputRecordError(str(path), f"at line {index + 1}", rule)

    if len(fields) < 3:
        raise bad(f"a BED line needs chrom, start and end; got {len(fields)} field(s)")
    chrom = fields[0]
    try:
        start, end = int(fields[1]), int(fields[2])
    except ValueError as exc:
        raise bad(f"start and end must be integers, got {fields[1]!r} and {fields[2]!r}") from exc
    if start < 0 or end <= start:
        raise bad(f"need 0 <= start < end, got start {start}, end {end}")
    if chrom not in reference.lengths:
        raise bad(f"chrom {chrom!r} is not in reference {reference.name}")
    if end > reference.lengths[chrom]:
        raise bad(f"end {end} is past the end of {chrom} ({reference.lengths[chrom]})")
    return chrom, start, end, fields[3] if len(fields) > 3 else ""
