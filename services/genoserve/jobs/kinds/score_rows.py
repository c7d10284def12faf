"""``platform.score_rows``: run a model with one 2-D input and one 2-D output (any port names)
over the rows of .npy / .parquet files.

The platform's own job kind, used to exercise the job machinery with the test model. Each input
file gives one output file ``<stem>.scores.<npy|parquet>`` in the output folder, rows in input
order. A row with a non-finite value fails the job naming the file and row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import Settings
from genoserve.jobs.kinds.base import (
    InputRecordError,
    JobKind,
    PlannedShard,
    ShardContext,
    check_model_name,
    shard_ranges,
)
from genoserve.jobs.kinds.params import ModelName, ModelParams, PositiveInt
from genoserve.jobs.paths import temporary_name
from genoserve.runtime.registry import ModelVersionRecord

Array = np.ndarray[Any, Any]
SUFFIXES = (".npy", ".parquet")


def _columns(path: Path) -> int:
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="r")
        if array.ndim != 2:
            raise InvalidArgument.field(
                "inputs", f"{path}: must be a 2-D array (rows x features), got shape {array.shape}"
            )
        if array.dtype.kind not in "fiu":
            raise InvalidArgument.field("inputs", f"{path}: dtype {array.dtype} is not numeric")
        return int(array.shape[1])
    schema = pq.read_schema(path)
    bad = [f.name for f in schema if not (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
    if bad:
        raise InvalidArgument.field("inputs", f"{path}: columns {bad} are not numeric")
    return len(schema)


def _rows(path: Path) -> int:
    if path.suffix == ".npy":
        return int(np.load(path, mmap_mode="r").shape[0])
    return int(pq.ParquetFile(path).metadata.num_rows)


class ScoreRowsParams(ModelParams):
    """``platform.score_rows``: a model with one 2-D input over the rows of .npy / .parquet files."""

    model: ModelName = "platform-mlp"
    """The model to run: one float32 input [rows, features], one 2-D output (default platform-mlp)."""
    shard_size: PositiveInt = 100_000
    """Rows per shard."""


class ScoreRows(JobKind[ScoreRowsParams]):
    name = "platform.score_rows"
    queue = "platform"
    params_model = ScoreRowsParams

    def model(self, params: Mapping[str, str]) -> tuple[str, str]:
        typed = self.typed(params)
        check_model_name(typed.model)
        return typed.model, typed.version

    def plan(
        self, inputs: list[Path], params: Mapping[str, str], record: ModelVersionRecord, settings: Settings
    ) -> list[PlannedShard]:
        spec = record.spec
        assert spec is not None
        if len(spec.inputs) != 1 or len(spec.inputs[0].shape) != 2 or spec.inputs[0].dtype != "float32":
            raise InvalidArgument.field("params[model]", f"{spec.name} does not take one 2-D float32 input")
        if len(spec.outputs) != 1 or len(spec.outputs[0].shape) != 2:
            raise InvalidArgument.field("params[model]", f"{spec.name} does not give one 2-D output")
        width = spec.inputs[0].shape[1]
        size = self.typed(params).shard_size
        shards: list[PlannedShard] = []
        for index, path in enumerate(inputs):
            if path.suffix not in SUFFIXES:
                raise InvalidArgument.field(f"inputs[{index}]", f"{path}: must be a .npy or .parquet file")
            try:
                columns, rows = _columns(path), _rows(path)
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise InvalidArgument.field(f"inputs[{index}]", f"{path}: unreadable: {exc}") from exc
            if width != -1 and columns != width:
                raise InvalidArgument.field(
                    f"inputs[{index}]", f"{path}: has {columns} columns, model {spec.name} takes {width}"
                )
            shards += shard_ranges(index, rows, size, len(shards), settings)
        return shards

    def outputs(
        self, inputs: list[Path], output_dir: Path, params: Mapping[str, str], roots: Sequence[Path]
    ) -> list[Path]:
        return [output_dir / f"{path.stem}.scores{path.suffix}" for path in inputs]

    def shard_result(self, output_stem: Path) -> Path:
        return output_stem.with_suffix(".npy")

    def _reader(self, ctx: ShardContext) -> Callable[[int, int], Array]:
        """rows [start, stop) of the shard's input: a .npy file is memory-mapped, a Parquet file's
        shard is read once (only the row groups that hold it), then sliced."""
        path = ctx.inputs[ctx.input_index]
        if path.suffix == ".npy":
            mapped = np.load(path, mmap_mode="r")
            return lambda start, stop: np.asarray(mapped[start:stop])
        table = _read_parquet_rows(path, ctx.start, ctx.stop)

        def read_parquet(start: int, stop: int) -> Array:
            part = table.slice(start - ctx.start, stop - start)
            return np.column_stack([c.to_numpy(zero_copy_only=False) for c in part.columns])

        return read_parquet

    def run_shard(self, ctx: ShardContext) -> int:
        path = ctx.inputs[ctx.input_index]
        read = self._reader(ctx)
        x, y = ctx.spec.inputs[0].name, ctx.spec.outputs[0].name  # the ports plan checked
        outputs: list[dict[str, Array]] = []
        for chunk_start in range(ctx.start, ctx.stop, ctx.batch_size):
            ctx.check()
            ctx.progress(chunk_start - ctx.start)
            chunk_stop = min(chunk_start + ctx.batch_size, ctx.stop)
            rows = read(chunk_start, chunk_stop)
            bad = ~np.isfinite(rows)
            if bad.any():
                row, column = np.argwhere(bad)[0]
                raise InputRecordError(str(path), int(chunk_start + row), f"non-finite value in column {int(column)}")
            outputs.append(ctx.infer({x: rows.astype(np.float32, copy=False)}))
        result = np.concatenate([o[y] for o in outputs]) if outputs else np.zeros((0, 0), np.float32)
        target = self.shard_result(ctx.output_stem)
        tmp = temporary_name(target)
        with open(tmp, "wb") as fh:
            np.save(fh, result)
        os.replace(tmp, target)  # a re-run shard overwrites, never duplicates
        return ctx.stop - ctx.start

    def merge(
        self,
        inputs: list[Path],
        shards: list[tuple[PlannedShard, Path]],
        output_dir: Path,
        params: Mapping[str, str],
        roots: Sequence[Path],
    ) -> list[Path]:
        finals = self.outputs(inputs, output_dir, params, roots)
        for index, (path, final) in enumerate(zip(inputs, finals, strict=True)):
            parts = [result for shard, result in shards if shard.input_index == index]
            arrays = [np.load(part, mmap_mode="r") for part in parts]
            total = sum(a.shape[0] for a in arrays)
            width = arrays[0].shape[1] if arrays else 0
            tmp = temporary_name(final)
            if path.suffix == ".npy":
                merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, width))
                offset = 0
                for array in arrays:
                    merged[offset : offset + array.shape[0]] = array
                    offset += array.shape[0]
                merged.flush()
                del merged
                tmp_written = tmp
            else:
                tmp_written = tmp
                schema = pa.schema([("row", pa.int64())] + [(f"y{j}", pa.float32()) for j in range(width)])
                with pq.ParquetWriter(tmp, schema) as writer:
                    offset = 0
                    for array in arrays:
                        columns = [pa.array(np.arange(offset, offset + len(array), dtype=np.int64))]
                        columns += [pa.array(np.asarray(array[:, j])) for j in range(width)]
                        writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                        offset += len(array)
            os.replace(tmp_written, final)
        return finals


def _read_parquet_rows(path: Path, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) reading only the row groups that hold them."""
    parquet = pq.ParquetFile(path)
    groups, offset, first = [], 0, None
    for g in range(parquet.metadata.num_row_groups):
        n = parquet.metadata.row_group(g).num_rows
        if offset + n > start and offset < stop:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    table = parquet.read_row_groups(groups)
    return table.slice(start - (first or 0), stop - start)
