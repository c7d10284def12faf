"""Bulk job kind ``segmentation.segment_images``: TIFF/PNG files, folders or multi-page TIFFs in;
a label TIFF per image, one CSV of per-cell statistics and optional PNG overlays out.

Inputs are image files or folders (the files in a folder matching ``params[pattern]``, a
comma-separated list of file-name globs, sorted by name; subfolders are not searched). Each page
of a multi-page TIFF is one image. Every file is checked against the input roots where it is
listed and again where it is read (``genoserve.jobs.paths``).
Outputs in ``output_dir``: ``<name>.labels.tif`` per image (``<name>`` is the file's stem, with
``_p<page>`` for pages of a stack), ``<name>.overlay.png`` when ``params[overlays]`` is true,
and ``cells.csv`` (one row per cell, images in input order). Shards write into the job's staging
folder; the merge moves the files into place, so a failed job leaves no outputs.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tifffile
from pydantic import model_validator

from genoserve.core.errors import GenoserveError, InvalidArgument
from genoserve.core.settings import Settings
from genoserve.jobs.kinds.base import (
    InputRecordError,
    JobKind,
    PlannedShard,
    ShardContext,
    required_model,
    shard_ranges,
)
from genoserve.jobs.kinds.params import Flag, Integer, Integers, ModelName, ModelParams, Number, PositiveInt
from genoserve.jobs.paths import folder_files, input_file, name_patterns, temporary_name
from genoserve.runtime.registry import ModelVersionRecord
from genoserve.segmentation import images
from genoserve.segmentation.contract import SegmentationContract
from genoserve.segmentation.csvout import COLUMNS, format_row, image_name
from genoserve.segmentation.dynamics import MaskParams
from genoserve.segmentation.pipeline import check_params, segment_sync

Array = np.ndarray[Any, Any]
CELLS_CSV = "cells.csv"


@dataclass(frozen=True)
class ImageItem:
    path: Path
    page: int | None  # None: the file's only image
    name: str  # output name stem


def _is_stack(path: Path) -> int:
    """Number of pages of a multi-page TIFF (0 for anything else)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return 0
    try:
        with tifffile.TiffFile(path) as tif:
            pages = len(tif.pages)
    except Exception as exc:
        raise InvalidArgument.field(str(path), f"cannot be read as TIFF: {exc}") from exc
    return pages if pages > 1 else 0


def list_items(path: Path, pattern: str, roots: Sequence[Path], field: str = "inputs") -> list[ImageItem]:
    """The images of one input (a file, a multi-page TIFF, or a folder), in a fixed order.

    A folder's files are those matching the file-name globs of ``pattern``; every file must
    lie under ``roots`` and be a regular file (PathError naming ``field`` and the file).
    """
    globs = name_patterns(pattern, "params[pattern]")
    if os.path.isdir(path):
        files = folder_files(path, globs, roots, field)
    else:
        input_file(path, roots, field)
        files = [path]
    items: list[ImageItem] = []
    for f in files:
        pages = _is_stack(input_file(f, roots, field))
        if pages:
            items.extend(ImageItem(f, k, image_name(f, k)) for k in range(pages))
        else:
            items.append(ImageItem(f, None, image_name(f)))
    return items


class SegmentImagesParams(ModelParams):
    """``segmentation.segment_images``: label masks and per-cell statistics of images."""

    model: ModelName = "cellpose-nuclei"
    """The segmentation model (default cellpose-nuclei)."""
    pattern: str = "*.tif,*.tiff,*.png"
    """For folder inputs: comma-separated file-name globs of the images to segment."""
    channels: Integers = ()
    """Comma-separated channel indices fed to the model (empty: the model's default)."""
    diameter: Number = 0.0
    """Mean cell diameter in pixels; images are rescaled to the model's (0: not rescaled)."""
    cellprob_threshold: Number = 0.0
    """Cell-probability logit above which a pixel is in a cell, in [-50, 50]."""
    flow_threshold: Number = 0.4
    """Largest flow error a mask may have (0: no check)."""
    min_size: Integer = 15
    """Smallest mask kept, in pixels."""
    niter: Integer = 200
    """Steps that pixels follow the flows, 1 to 10000."""
    overlays: Flag = False
    """Also write ``<name>.overlay.png``: the outlines drawn on each image."""
    shard_size: PositiveInt = 4
    """Images per shard."""

    @model_validator(mode="after")
    def _in_range(self) -> SegmentImagesParams:
        try:
            check_params(self.diameter, self.masks)
        except InvalidArgument as exc:  # named as the job's params, not the Segment request's fields
            [violation] = exc.violations
            raise InvalidArgument.field(f"params[{violation.field}]", violation.description) from exc
        name_patterns(self.pattern, "params[pattern]")
        return self

    @property
    def masks(self) -> MaskParams:
        return MaskParams(niter=self.niter, cellprob_threshold=self.cellprob_threshold,
                          flow_threshold=self.flow_threshold, min_size=self.min_size)  # fmt: skip


class SegmentImages(JobKind[SegmentImagesParams]):
    name = "segmentation.segment_images"
    queue = "segmentation"
    params_model = SegmentImagesParams
    takes_folders: ClassVar[bool] = True

    def model(self, params: Mapping[str, str]) -> tuple[str, str]:
        return required_model(self.typed(params), "a segmentation model")

    def plan(
        self, inputs: list[Path], params: Mapping[str, str], record: ModelVersionRecord, settings: Settings
    ) -> list[PlannedShard]:
        record.contract_as(SegmentationContract)
        typed = self.typed(params)
        shards: list[PlannedShard] = []
        for index, path in enumerate(inputs):
            items = list_items(path, typed.pattern, settings.jobs.input_roots, f"inputs[{index}]")
            if not items:
                raise InvalidArgument.field(f"inputs[{index}]", f"{path} holds no images matching {typed.pattern}")
            shards += shard_ranges(index, len(items), typed.shard_size, len(shards), settings)
        return shards

    def outputs(
        self, inputs: list[Path], output_dir: Path, params: Mapping[str, str], roots: Sequence[Path]
    ) -> list[Path]:
        typed = self.typed(params)
        finals: list[Path] = []
        for index, path in enumerate(inputs):
            for item in list_items(path, typed.pattern, roots, f"inputs[{index}]"):
                finals.append(output_dir / f"{item.name}.labels.tif")
                if typed.overlays:
                    finals.append(output_dir / f"{item.name}.overlay.png")
        return [*finals, output_dir / CELLS_CSV]

    def shard_result(self, output_stem: Path) -> Path:
        return output_stem.with_suffix(".cells.csv")

    def _read(self, item: ImageItem, settings: Settings) -> Array:
        record = item.path.name if item.page is None else f"page {item.page}"
        real = input_file(item.path, settings.jobs.input_roots)
        try:
            if item.page is None:
                [raw] = images.read_images(str(real), max_pixels=settings.segmentation.max_pixels)[:1]
            else:
                with tifffile.TiffFile(real) as tif:
                    page = tif.pages[item.page]
                    images.check_shape(tuple(page.shape), "image", settings.segmentation.max_pixels, declared="TIFF")
                    raw = np.asarray(page.asarray())
            return images.check(raw, "image", settings.segmentation.max_pixels)
        except InvalidArgument as exc:
            raise InputRecordError(str(item.path), record, exc.message) from exc
        except OSError as exc:
            raise InputRecordError(str(item.path), record, f"cannot be read: {exc}") from exc

    def run_shard(self, ctx: ShardContext) -> int:
        contract = ctx.contract_as(SegmentationContract)
        typed = self.typed(ctx.params)
        params, diameter, channels, overlays = typed.masks, typed.diameter, list(typed.channels), typed.overlays
        items = list_items(ctx.inputs[ctx.input_index], typed.pattern, ctx.roots)[ctx.start : ctx.stop]
        tile_batch = min(ctx.batch_size, ctx.settings.segmentation.tile_batch)

        def forward(batch: Array) -> Array:
            return ctx.infer({contract.input: batch})[contract.output]

        rows: list[list[str]] = []
        for k, item in enumerate(items):
            ctx.check()
            ctx.progress(k)
            image = self._read(item, ctx.settings)
            try:
                selected = images.select_channels(image, channels, contract.channels, field="params[channels]")
            except GenoserveError as exc:
                raise InputRecordError(str(item.path), item.page if item.page is not None else item.path.name,
                                       exc.message) from exc  # fmt: skip
            result = segment_sync(
                selected,
                contract,
                forward,
                diameter,
                params,
                tile_batch,
                ctx.settings.segmentation.reconstruction_block,
            )
            labels = ctx.output_stem.with_suffix(f".{k}.labels.tif")
            tmp = temporary_name(labels)
            images.write_labels(str(tmp), result.masks)
            os.replace(tmp, labels)
            if overlays:
                png = ctx.output_stem.with_suffix(f".{k}.overlay.png")
                tmp = temporary_name(png)
                tmp.write_bytes(images.overlay_png(image, result.masks))
                os.replace(tmp, png)
            rows.extend(format_row({"image": item.name, **row}) for row in result.stats.rows())
        part = self.shard_result(ctx.output_stem)
        tmp = temporary_name(part)
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
        os.replace(tmp, part)
        return len(items)

    def merge(self, inputs: list[Path], shards: list[tuple[PlannedShard, Path]], output_dir: Path,
              params: Mapping[str, str], roots: Sequence[Path]) -> list[Path]:  # fmt: skip
        typed = self.typed(params)
        overlays = typed.overlays
        listings = [list_items(p, typed.pattern, roots) for p in inputs]
        csv_final = output_dir / CELLS_CSV
        tmp_csv = temporary_name(csv_final)
        finals: list[Path] = []
        with open(tmp_csv, "w", newline="") as out:
            out.write(",".join(COLUMNS) + "\n")
            for shard, part in shards:
                stem = part.with_suffix("").with_suffix("")  # shard-000001.cells.csv -> shard-000001
                for k, item in enumerate(listings[shard.input_index][shard.start : shard.stop]):
                    moves = [(stem.with_suffix(f".{k}.labels.tif"), output_dir / f"{item.name}.labels.tif")]
                    if overlays:
                        moves.append((stem.with_suffix(f".{k}.overlay.png"), output_dir / f"{item.name}.overlay.png"))
                    for source, target in moves:
                        if source.exists():
                            os.replace(source, target)
                        elif not target.exists():  # a retried merge finds the files already moved
                            raise FileNotFoundError(f"shard output {source} is missing")
                        finals.append(target)
                with open(part) as handle:
                    out.write(handle.read())
        os.replace(tmp_csv, csv_final)
        return [*finals, csv_final]
