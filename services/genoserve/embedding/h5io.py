"""Chunked readers of .h5ad (AnnData) and 10x Cell Ranger .h5 counts, and a chunked .h5ad writer.

Nothing here loads a whole matrix: readers return cells [start, stop) on demand and the writer
adds ``obsm[key]`` block by block, so memory is bounded by the chunk size, not the file.

Formats (facts, not code, taken from their specifications):
- AnnData on-disk format (anndata docs, "On-disk format"): ``X`` (or ``layers/<name>``) is a
  dense dataset or a group with ``encoding-type`` ``csr_matrix``/``csc_matrix`` holding ``data``,
  ``indices``, ``indptr`` and a ``shape`` attribute; ``obs``/``var`` are dataframes whose
  ``_index`` attribute names the index dataset; categoricals hold ``codes`` and ``categories``.
- 10x Genomics feature-barcode matrix HDF5 (Cell Ranger >= 3): group ``matrix`` with ``data``,
  ``indices``, ``indptr``, ``shape`` = [n_features, n_barcodes] in CSC form (one column per
  barcode, i.e. CSR over cells), ``barcodes`` and ``features/{name,id,feature_type}``. Cell
  Ranger 2 files have one such group per genome with ``genes``/``gene_names``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from genoserve.core.errors import InvalidArgument, quoted
from genoserve.embedding.counts import Counts, CsrCounts

Array = np.ndarray[Any, Any]


def _strings(dataset: h5py.Dataset, start: int | None = None, stop: int | None = None) -> list[str]:
    values = dataset[start:stop] if dataset.shape else [dataset[()]]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class CountsFile:
    """Cells x genes counts of one file, read in row chunks. Use ``open_counts``."""

    path: Path
    n_cells: int
    genes: list[str]
    #: "h5ad" or "10x"
    format: str

    def __init__(self, path: Path, handle: h5py.File) -> None:
        self.path = path
        self.handle = handle

    def cell_ids(self, start: int, stop: int) -> list[str]:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> Counts:
        """Cells [start, stop): a ``CsrCounts`` or a dense array [stop - start, n_genes]."""
        raise NotImplementedError

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> CountsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class H5adCounts(CountsFile):
    format = "h5ad"

    def __init__(self, path: Path, handle: h5py.File, layer: str = "") -> None:
        super().__init__(path, handle)
        where = f"layers/{layer}" if layer else "X"
        if layer and (("layers" not in handle) or layer not in handle["layers"]):
            known = sorted(handle["layers"]) if "layers" in handle else []
            raise InvalidArgument.field("layer", f"{path}: no layer {quoted(layer)}; its layers: {known}")
        if where not in handle:
            raise InvalidArgument.field("inputs", f"{path}: no {where} in this .h5ad")
        element = handle[where]
        self.where = where
        self.genes = _dataframe_index(handle, "var", path)
        obs_index = _dataframe_index(handle, "obs", path, names_only=True)
        self._obs_index: h5py.Dataset = obs_index
        if isinstance(element, h5py.Group):
            encoding = _attr(element, "encoding-type")
            if encoding == "csc_matrix":
                raise InvalidArgument.field(
                    "inputs",
                    f"{path}: {where} is CSC, which cannot be read by cells in chunks; write it as CSR "
                    "(adata.X = adata.X.tocsr())",
                )
            if encoding != "csr_matrix":
                raise InvalidArgument.field("inputs", f"{path}: {where} has unsupported encoding {encoding!r}")
            shape = tuple(int(x) for x in element.attrs["shape"])
            self._indptr: h5py.Dataset = element["indptr"]
            self._indices: h5py.Dataset = element["indices"]
            self._data: h5py.Dataset = element["data"]
            self._dense: h5py.Dataset | None = None
        else:
            shape = tuple(int(x) for x in element.shape)
            self._dense = element
            if len(shape) != 2:
                raise InvalidArgument.field("inputs", f"{path}: {where} is not a 2-D matrix (shape {list(shape)})")
        self.n_cells = shape[0]
        if shape[1] != len(self.genes):
            raise InvalidArgument.field(
                "inputs", f"{path}: {where} has {shape[1]} columns but var has {len(self.genes)} genes"
            )
        if self._obs_index.shape[0] != self.n_cells:
            rows = self._obs_index.shape[0]
            raise InvalidArgument.field("inputs", f"{path}: obs has {rows} rows but {where} has {shape[0]}")

    def cell_ids(self, start: int, stop: int) -> list[str]:
        return _strings(self._obs_index, start, stop)

    def read(self, start: int, stop: int) -> Counts:
        if self._dense is not None:
            return np.asarray(self._dense[start:stop])
        indptr = np.asarray(self._indptr[start : stop + 1], dtype=np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        return CsrCounts(indptr - lo, np.asarray(self._indices[lo:hi]), np.asarray(self._data[lo:hi]), len(self.genes))


class TenxCounts(CountsFile):
    format = "10x"

    def __init__(self, path: Path, handle: h5py.File, gene_column: str = "name") -> None:
        super().__init__(path, handle)
        if "matrix" in handle:
            group = handle["matrix"]
            names = group["features/name" if gene_column == "name" else "features/id"]
            ids, kinds = group["features/id"], group["features/feature_type"]
        else:  # Cell Ranger 2: one group per genome
            genomes = [k for k in handle if isinstance(handle[k], h5py.Group)]
            if not genomes:
                raise InvalidArgument.field("inputs", f"{path}: not a 10x .h5 (no matrix group)")
            group = handle[genomes[0]]
            names = group["gene_names" if gene_column == "name" else "genes"]
            ids, kinds = group["genes"], None
        self.group = group
        self.genes = _strings(names)
        self.gene_ids = _strings(ids)
        self.feature_types = _strings(kinds) if kinds is not None else ["Gene Expression"] * len(self.genes)
        n_features, self.n_cells = (int(x) for x in group["shape"][:])
        if n_features != len(self.genes):
            raise InvalidArgument.field("inputs", f"{path}: shape says {n_features} features, found {len(self.genes)}")

    def cell_ids(self, start: int, stop: int) -> list[str]:
        return _strings(self.group["barcodes"], start, stop)

    def read(self, start: int, stop: int) -> Counts:
        indptr = np.asarray(self.group["indptr"][start : stop + 1], dtype=np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        return CsrCounts(
            indptr - lo, np.asarray(self.group["indices"][lo:hi]), np.asarray(self.group["data"][lo:hi]),
            len(self.genes),
        )  # fmt: skip


def _attr(node: h5py.HLObject, name: str) -> str:
    value = node.attrs.get(name, "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _dataframe_index(handle: h5py.File, name: str, path: Path, names_only: bool = False) -> Any:
    if name not in handle or not isinstance(handle[name], h5py.Group):
        raise InvalidArgument.field("inputs", f"{path}: no {name} dataframe (not an AnnData >= 0.7 .h5ad)")
    frame = handle[name]
    index = _attr(frame, "_index") or "_index"
    if index not in frame:
        raise InvalidArgument.field("inputs", f"{path}: {name} has no index dataset {index!r}")
    return frame[index] if names_only else _strings(frame[index])


def open_counts(path: Path, layer: str = "", gene_column: str = "name") -> CountsFile:
    """Open an .h5ad or a 10x .h5 for chunked reading; InvalidArgument naming the file otherwise."""
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InvalidArgument.field("inputs", f"{path}: not an HDF5 file (.h5ad or 10x .h5): {exc}") from exc
    try:
        if "X" in handle or "obs" in handle or _attr(handle, "encoding-type") == "anndata":
            return H5adCounts(path, handle, layer)
        if layer:
            raise InvalidArgument.field("layer", f"{path}: a 10x .h5 has no layers")
        return TenxCounts(path, handle, gene_column)
    except (KeyError, ValueError, TypeError) as exc:
        handle.close()
        raise InvalidArgument.field("inputs", f"{path}: unreadable counts file: {exc}") from exc
    except BaseException:
        handle.close()
        raise


# -- writing ------------------------------------------------------------------------------------

_STR = h5py.string_dtype()


def _encode(node: h5py.HLObject, kind: str, version: str = "0.2.0") -> None:
    node.attrs["encoding-type"] = kind
    node.attrs["encoding-version"] = version


def _write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    dataset = group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=_STR)
    _encode(dataset, "string-array")


def _write_dataframe(group: h5py.Group, name: str, index: Sequence[str], columns: dict[str, Sequence[str]]) -> None:
    frame = group.create_group(name)
    _encode(frame, "dataframe")
    frame.attrs["_index"] = "_index"
    frame.attrs["column-order"] = np.array(list(columns), dtype=object) if columns else np.array([], dtype=float)
    _write_strings(frame, "_index", index)
    for column, values in columns.items():
        _write_strings(frame, column, values)


def _write_uns_value(group: h5py.Group, name: str, value: str | float | int) -> None:
    if name in group:
        del group[name]
    if isinstance(value, str):
        dataset = group.create_dataset(name, data=value, dtype=_STR)
        _encode(dataset, "string")
    else:
        dataset = group.create_dataset(name, data=value)
        _encode(dataset, "numeric-scalar")


def _dict_group(parent: h5py.Group, name: str) -> h5py.Group:
    if name not in parent:
        group = parent.create_group(name)
        _encode(group, "dict", "0.1.0")
    return parent[name]


def _copy_rows(source: h5py.Dataset, target: h5py.Group, name: str, chunk: int, dtype: Any = None) -> None:
    out = target.create_dataset(name, shape=source.shape, dtype=dtype or source.dtype, chunks=True)
    for i in range(0, source.shape[0], chunk):
        out[i : i + chunk] = source[i : i + chunk]


def _h5ad_from_10x(source: TenxCounts, target: Path, chunk: int) -> None:
    """An .h5ad holding the 10x file's counts (CSR X), barcodes (obs) and features (var)."""
    with h5py.File(target, "w") as out:
        _encode(out, "anndata", "0.1.0")
        x = out.create_group("X")
        _encode(x, "csr_matrix", "0.1.0")
        x.attrs["shape"] = np.array([source.n_cells, len(source.genes)], dtype=np.int64)
        for name in ("data", "indices", "indptr"):
            _copy_rows(source.group[name], x, name, chunk * 64)
        obs = out.create_group("obs")
        _encode(obs, "dataframe")
        obs.attrs["_index"] = "_index"
        obs.attrs["column-order"] = np.array([], dtype=float)
        barcodes = obs.create_dataset("_index", shape=(source.n_cells,), dtype=_STR)
        _encode(barcodes, "string-array")
        for i in range(0, source.n_cells, chunk):
            barcodes[i : i + chunk] = np.array(source.cell_ids(i, min(i + chunk, source.n_cells)), dtype=object)
        _write_dataframe(out, "var", source.genes, {"gene_ids": source.gene_ids, "feature_types": source.feature_types})
        for name in ("layers", "obsm", "obsp", "varm", "varp", "uns"):
            _dict_group(out, name)


class EmbeddingWriter:
    """Writes ``target``: the input as an .h5ad (an .h5ad input copied whole, a 10x .h5 converted)
    plus ``obsm[key]`` float32 [n_cells, n_latent] written block by block (with ``variances_key``
    also the posterior variances in ``obsm[variances_key]``) and provenance in
    ``uns["genoserve"]``. The file appears at ``target`` only on ``finish`` (temp + rename)."""

    def __init__(self, source: CountsFile, target: Path, n_latent: int, key: str = "X_scVI", chunk: int = 8192,
                 variances_key: str = "") -> None:  # fmt: skip
        self.target = target
        self.tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        self.n_cells = source.n_cells
        self.written = 0
        if isinstance(source, TenxCounts):
            _h5ad_from_10x(source, self.tmp, chunk)
        else:
            shutil.copyfile(source.path, self.tmp)
        self.handle = h5py.File(self.tmp, "r+")
        obsm = _dict_group(self.handle, "obsm")
        rows = max(1, min(self.n_cells, 16384))
        self.datasets: list[h5py.Dataset] = []
        for name in (key, variances_key) if variances_key else (key,):
            if name in obsm:
                del obsm[name]
            dataset = obsm.create_dataset(name, shape=(self.n_cells, n_latent), dtype="<f4", chunks=(rows, n_latent))
            _encode(dataset, "array")
            self.datasets.append(dataset)

    def write(self, block: Array, variances: Array | None = None) -> None:
        """The next cells' latent means (and variances when the writer has a variances key),
        float32 [rows, n_latent] each, in cell order."""
        stop = self.written + block.shape[0]
        if stop > self.n_cells:
            raise ValueError(f"{stop} rows written to an embedding of {self.n_cells} cells")
        if (variances is not None) != (len(self.datasets) == 2):
            raise ValueError("give variances exactly when the writer was made with a variances key")
        for dataset, values in zip(self.datasets, (block, variances), strict=False):
            dataset[self.written : stop] = values
        self.written = stop

    def finish(self, provenance: dict[str, str | float | int]) -> Path:
        if self.written != self.n_cells:
            raise ValueError(f"only {self.written} of {self.n_cells} cells were embedded")
        group = _dict_group(_dict_group(self.handle, "uns"), "genoserve")
        for name, value in provenance.items():
            _write_uns_value(group, name, value)
        self.handle.close()
        os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        if self.handle.id.valid:
            self.handle.close()
        self.tmp.unlink(missing_ok=True)


def read_obs_column(path: Path, column: str, start: int, stop: int, field: str = "obs") -> list[str]:
    """Values of ``obs[column]`` for cells [start, stop) as strings (categoricals decoded). A
    missing column is InvalidArgument on ``field`` (the option or parameter that named it)."""
    with h5py.File(path, "r") as handle:
        obs = handle["obs"]
        if column not in obs:
            known = [k for k in obs if k != _attr(obs, "_index")]
            raise InvalidArgument.field(field, f"{path}: obs has no column {quoted(column)}; columns: {known}")
        node = obs[column]
        if isinstance(node, h5py.Group):  # categorical
            categories = _strings(node["categories"])
            codes = node["codes"][start:stop]
            return [categories[c] if c >= 0 else "NA" for c in codes]
        if node.dtype.kind in "OSU":
            return _strings(node, start, stop)
        return [str(v) for v in node[start:stop]]
