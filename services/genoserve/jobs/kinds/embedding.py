"""Bulk job kind of the embedding family: ``embedding.embed_h5ad``.

Each input (.h5ad with counts in X or a named layer, or a 10x Cell Ranger .h5) becomes
``<stem>.embedded.h5ad``: the input (a 10x file converted) plus ``obsm["X_scVI"]`` (posterior
means), with ``params[variances]`` also ``obsm["X_scVI_var"]`` (posterior variances), and
provenance in ``uns["genoserve"]``; optionally ``<stem>.embedding.png`` (a UMAP). Shards are cell
ranges; each writes its latent block as .npy (atomically); the merge streams them into the output
in order. Within a shard, the next chunk is read, checked and aligned on a second thread while
the session runs the current one. Memory is bounded by the shard and batch sizes, not the file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import Settings
from genoserve.embedding import contract as names
from genoserve.embedding.contract import EmbeddingContract
from genoserve.embedding.genes import DEFAULT_MIN_OVERLAP, align
from genoserve.embedding.h5io import EmbeddingWriter, H5adCounts, open_counts, read_obs_column
from genoserve.embedding.plot import embedding_png
from genoserve.embedding.request import Prepared, prepare
from genoserve.jobs.kinds.base import (
    InputRecordError,
    JobKind,
    PlannedShard,
    ShardContext,
    required_model,
    shard_ranges,
)
from genoserve.jobs.kinds.params import Flag, ModelParams, OptionalNumber, PositiveInt
from genoserve.jobs.paths import input_file, temporary_name, write_atomically
from genoserve.runtime.registry import ModelVersionRecord

Array = np.ndarray[Any, Any]
KEY = "X_scVI"
VAR_KEY = "X_scVI_var"


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".h5ad", ".h5", ".hdf5"):
        name = name.removesuffix(ext)
    return name


def _save_npy(target: Path, array: Array) -> None:
    tmp = temporary_name(target)
    with open(tmp, "wb") as fh:
        np.save(fh, array.astype(np.float32, copy=False))
    os.replace(tmp, target)


def _obs_column(path: Path, column: str, param: str) -> None:
    """INVALID_ARGUMENT naming ``params[<param>]`` unless the .h5ad has the obs ``column``."""
    try:
        read_obs_column(path, column, 0, 1)
    except InvalidArgument as exc:
        rule = exc.violations[0].description if exc.violations else exc.message
        raise InvalidArgument.field(f"params[{param}]", rule) from exc


class EmbedH5adParams(ModelParams):
    """``embedding.embed_h5ad``: a latent embedding per cell of .h5ad or 10x .h5 files."""

    layer: str = ""
    """Read the counts from this layer of an .h5ad (empty: X)."""
    batch_key: str = ""
    """For a model with a batch covariate: the obs column holding each cell's batch (empty: the
    model's own key)."""
    batch: str = ""
    """For a model with a batch covariate: one batch label for every cell (instead of batch_key)."""
    shard_size: PositiveInt = 50_000
    """Cells per shard."""
    min_gene_overlap: OptionalNumber = None
    """Smallest fraction of the model's genes the file must have (empty: 0.8)."""
    not_raw_counts: Flag = False
    """Accept counts that are not whole numbers (normalized or corrected values)."""
    variances: Flag = False
    """Also write the posterior variances, to obsm["X_scVI_var"]."""
    plot: Flag = False
    """Also write ``<stem>.embedding.png``, a UMAP of the latent."""
    color_by: str = ""
    """With plot: the obs column that colours the UMAP."""

    @property
    def overlap(self) -> float:
        return DEFAULT_MIN_OVERLAP if self.min_gene_overlap is None else self.min_gene_overlap


class EmbedH5ad(JobKind[EmbedH5adParams]):
    name = "embedding.embed_h5ad"
    queue = "embedding"
    params_model = EmbedH5adParams

    def model(self, params: Mapping[str, str]) -> tuple[str, str]:
        return required_model(self.typed(params), "an embedding model, e.g. scvi-pbmc")

    def plan(self, inputs: list[Path], params: Mapping[str, str], record: ModelVersionRecord,
             settings: Settings) -> list[PlannedShard]:  # fmt: skip
        model = record.contract_as(EmbeddingContract)
        typed = self.typed(params)
        size = typed.shard_size
        shards: list[PlannedShard] = []
        for index, path in enumerate(inputs):
            try:
                with open_counts(path, typed.layer) as counts:
                    align(counts.genes, model.genes, typed.overlap, field="gene names")
                    self._check_batch(model, typed, counts, path)
                    if typed.plot and typed.color_by and isinstance(counts, H5adCounts):
                        _obs_column(path, typed.color_by, "color_by")  # else the merge would fail
                    n = counts.n_cells
            except InvalidArgument as exc:
                raise InvalidArgument.field(f"inputs[{index}]", exc.message) from exc
            if n == 0:
                raise InvalidArgument.field(f"inputs[{index}]", f"{path}: no cells")
            shards += shard_ranges(index, n, size, len(shards), settings)
        return shards

    @staticmethod
    def _batch_key(model: EmbeddingContract, params: EmbedH5adParams) -> str:
        return params.batch_key or model.batch_key

    def _check_batch(self, model: EmbeddingContract, params: EmbedH5adParams, counts: Any, path: Path) -> None:
        if not model.takes_batch:
            if params.batch or params.batch_key:
                raise InvalidArgument.field("params[batch_key]", "this model takes no batch covariate")
            return
        if params.batch:
            if params.batch not in model.batches:
                raise InvalidArgument.field(
                    "params[batch]", f"unknown batch label {params.batch!r}; known batches: {list(model.batches)}"
                )
            return
        key = self._batch_key(model, params)
        if not isinstance(counts, H5adCounts) or not key:
            raise InvalidArgument.field(
                "params[batch_key]",
                f"{path}: this model needs each cell's batch: give params batch_key (an obs "
                f"column of an .h5ad) or batch (one label for all); known batches: {list(model.batches)}",
            )
        _obs_column(path, key, "batch_key")

    def outputs(
        self, inputs: list[Path], output_dir: Path, params: Mapping[str, str], roots: Sequence[Path]
    ) -> list[Path]:
        out = [output_dir / f"{_stem(p)}.embedded.h5ad" for p in inputs]
        if self.typed(params).plot:
            out += [output_dir / f"{_stem(p)}.embedding.png" for p in inputs]
        return out

    def shard_result(self, output_stem: Path) -> Path:
        return output_stem.with_suffix(".npy")

    def run_shard(self, ctx: ShardContext) -> int:
        path = ctx.inputs[ctx.input_index]
        model = ctx.contract_as(EmbeddingContract)
        params = self.typed(ctx.params)
        key = self._batch_key(model, params) if model.takes_batch and not params.batch else ""
        not_raw = params.not_raw_counts
        outputs = [names.MEAN, names.VAR] if params.variances else [names.MEAN]
        blocks: dict[str, list[Array]] = {name: [] for name in outputs}
        with open_counts(path, params.layer) as counts:
            alignment = align(counts.genes, model.genes, params.overlap)

            def load(start: int) -> Prepared:
                """Cells [start, start + batch) of the shard as model inputs (runs on the reader thread)."""
                stop = min(start + ctx.batch_size, ctx.stop)
                labels = (
                    read_obs_column(path, key, start, stop) if key else ([params.batch] if model.takes_batch else [])
                )
                try:
                    return prepare(model, counts.genes, counts.read(start, stop), ["_"] * (stop - start), labels,
                                   not_raw_counts=not_raw, first_cell=start, alignment=alignment,
                                   log1p_inputs=ctx.log1p_inputs)  # fmt: skip
                except InvalidArgument as exc:
                    rule = exc.violations[0].description if exc.violations else exc.message
                    raise InputRecordError(str(path), f"in cells {start}-{stop - 1}", rule) from exc

            starts = range(ctx.start, ctx.stop, ctx.batch_size)
            # One chunk read ahead: h5py reads, checks and alignment overlap the session call.
            with ThreadPoolExecutor(1, thread_name_prefix="embed-reader") as reader:
                pending = reader.submit(load, starts[0])
                for i in range(len(starts)):
                    prepared = pending.result()
                    if i + 1 < len(starts):
                        pending = reader.submit(load, starts[i + 1])
                    ctx.check()
                    ctx.progress(starts[i] - ctx.start)
                    result = ctx.infer(prepared.inputs, prepared.log1p_applied)
                    for name in outputs:
                        blocks[name].append(result[name])
        version = int(params.version) if params.version else max(v.version for v in ctx.spec.versions)
        about = {
            "model": ctx.spec.name, "version": str(version), "model_sha256": ctx.spec.version(version).sha256,
            "gene_overlap": alignment.overlap, "genes_matched": alignment.matched, "model_genes": len(model.genes),
            "genes_missing": len(alignment.missing), "genes_dropped": alignment.extra,
        }  # fmt: skip
        write_atomically(ctx.output_stem.with_suffix(".json"), json.dumps(about).encode())
        target = self.shard_result(ctx.output_stem)
        if names.VAR in blocks:  # before the means: the means file marks the shard done
            _save_npy(ctx.output_stem.with_suffix(".var.npy"), np.concatenate(blocks[names.VAR]))
        _save_npy(target, np.concatenate(blocks[names.MEAN]))
        return ctx.stop - ctx.start

    def merge(self, inputs: list[Path], shards: list[tuple[PlannedShard, Path]], output_dir: Path,
              params: Mapping[str, str], roots: Sequence[Path]) -> list[Path]:  # fmt: skip
        typed = self.typed(params)
        finals: list[Path] = []
        for index, path in enumerate(inputs):
            path = input_file(path, roots)
            parts = [p for s, p in shards if s.input_index == index]
            target = output_dir / f"{_stem(path)}.embedded.h5ad"
            first = np.load(parts[0], mmap_mode="r")
            variances = typed.variances
            with open_counts(path, typed.layer) as counts:
                var_key = VAR_KEY if variances else ""
                writer = EmbeddingWriter(counts, target, int(first.shape[1]), variances_key=var_key)
                try:
                    for part in parts:
                        var = np.load(part.with_suffix(".var.npy"), mmap_mode="r") if variances else None
                        writer.write(np.load(part, mmap_mode="r"), var)
                    writer.finish(self._provenance(typed, parts[0], path))
                except BaseException:
                    writer.abort()
                    raise
            finals.append(target)
        if typed.plot:
            for path, h5ad in zip(inputs, list(finals), strict=True):
                finals.append(embedding_png(h5ad, output_dir / f"{_stem(path)}.embedding.png",
                                            color_by=typed.color_by))  # fmt: skip
        return finals

    def _provenance(self, params: EmbedH5adParams, part: Path, path: Path) -> dict[str, str | float | int]:
        about: dict[str, str | float | int] = json.loads(part.with_suffix(".json").read_text())
        extra = {"variances_key": VAR_KEY} if params.variances else {}
        return {**about, "source": str(path), "layer": params.layer or "X", "key": KEY, **extra,
                "written_by": self.name, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
