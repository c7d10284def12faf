"""The per-cell statistics CSV (one row per cell, with the image it belongs to), and the name
an image goes by in it (the same for the CLI and the bulk job)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

COLUMNS = (
    "image", "label", "area", "centroid_y", "centroid_x",
    "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x", "mean_intensity",
)  # fmt: skip


def image_name(path: str | Path, page: int | None = None) -> str:
    """The ``image`` column (and output-name stem) of one image: the file's stem, with
    ``_p<page>`` (4 digits) for a page of a multi-page TIFF."""
    stem = Path(path).stem
    return stem if page is None else f"{stem}_p{page:04d}"


def format_row(row: Mapping[str, object]) -> list[str]:
    return [f"{v:.6g}" if isinstance(v, float) else str(v) for v in (row[c] for c in COLUMNS)]


def write_cells_csv(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    """Write ``rows`` (dicts with ``COLUMNS``) with a header."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(format_row(row))
