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

from genoserve.core.errors import GenoserveError, InvalidArgument
from genoserve.core.settings import Settings
from genoserve.jobs.kinds.base import (
    InputRecordError,
    JobKind,
    PlannedShard,
    ShardContext,
    flag,
    positive_int,
    required_model,
    shard_ranges,
)
from genoserve.jobs.paths import folder_files, input_file, name_patterns, temporary_name
from genoserve.runtime.spec import ModelSpec
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


def _float(params: Mapping[str, str], key: str) -> float:
    try:
        value = float(params[key])
    except ValueError as exc:
        raise InvalidArgument.field(f"params[{key}]", f"must be a number, got {params[key]!r}") from exc
    if not np.isfinite(value):
        raise InvalidArgument.field(f"params[{key}]", f"must be finite, got {params[key]!r}")
    return value


def _int(params: Mapping[str, str], key: str) -> int:
    try:
        return int(params[key])
    except ValueError as exc:
        raise InvalidArgument.field(f"params[{key}]", f"must be an integer, got {params[key]!r}") from exc


def _channels(params: Mapping[str, str]) -> list[int]:
    text = params.get("channels", "").strip()
    if not text:
        return []
    try:
        return [int(c) for c in text.split(",")]
    except ValueError as exc:
        raise InvalidArgument.field("params[channels]", f"must be comma-separated integers, got {text!r}") from exc


def mask_params(params: Mapping[str, str]) -> MaskParams:
    result = MaskParams(
        niter=_int(params, "niter"), cellprob_threshold=_float(params, "cellprob_threshold"),
        flow_threshold=_float(params, "flow_threshold"), min_size=_int(params, "min_size"),
    )  # fmt: skip
    check_params(_float(params, "diameter"), result)
    return result


class SegmentImages(JobKind):
    name = "segmentation.segment_images"
    queue = "segmentation"
    defaults: ClassVar[Mapping[str, str]] = {
        "model": "cellpose-nuclei", "version": "", "pattern": "*.tif,*.tiff,*.png", "channels": "",
        "diameter": "0", "cellprob_threshold": "0", "flow_threshold": "0.4", "min_size": "15", "niter": "200",
        "overlays": "false", "shard_size": "4", "overwrite": "false",
    }  # fmt: skip
    flags: ClassVar[frozenset[str]] = frozenset({"overwrite", "overlays"})
    takes_folders: ClassVar[bool] = True

    def model(self, params: Mapping[str, str]) -> tuple[str, str]:
        return required_model(params, "a segmentation model")

    def _overlays(self, params: Mapping[str, str]) -> bool:
        return flag(params, "overlays")

    def plan(
        self, inputs: list[Path], params: Mapping[str, str], spec: ModelSpec, settings: Settings
    ) -> list[PlannedShard]:
        SegmentationContract.of(spec)
        mask_params(params)
        _channels(params)
        self._overlays(params)
        size = positive_int(params, "shard_size")
        name_patterns(params["pattern"], "params[pattern]")
        shards: list[PlannedShard] = []
        for index, path in enumerate(inputs):
            items = list_items(path, params["pattern"], settings.jobs.input_roots, f"inputs[{index}]")
            if not items:
                raise InvalidArgument.field(f"inputs[{index}]", f"{path} holds no images matching {params['pattern']}")
            shards += shard_ranges(index, len(items), size, len(shards), settings)
        return shards

    def outputs(
        self, inputs: list[Path], output_dir: Path, params: Mapping[str, str], roots: Sequence[Path]
    ) -> list[Path]:
        overlays = self._overlays(params)
        finals: list[Path] = []
        for index, path in enumerate(inputs):
            for item in list_items(path, params["pattern"], roots, f"inputs[{index}]"):
                finals.append(output_dir / f"{item.name}.labels.tif")
                if overlays:
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
        contract = SegmentationContract.of(ctx.spec)
        params = mask_params(ctx.params)
        diameter = _float(ctx.params, "diameter")
        channels = _channels(ctx.params)
        overlays = self._overlays(ctx.params)
        items = list_items(ctx.inputs[ctx.input_index], ctx.params["pattern"], ctx.roots)[ctx.start : ctx.stop]
        tile_batch = min(ctx.batch_size, ctx.settings.segmentation.tile_batch)

        def forward(batch: Array) -> Array:
            return ctx.infer({contract.input: batch})[contract.output]

        rows: list[list[str]] = []
        for k, item in enumerate(items):
            ctx.check()
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
        overlays = self._overlays(params)
        listings = [list_items(p, params["pattern"], roots) for p in inputs]
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
