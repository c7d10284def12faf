"""Rebuild the small example inputs the README's tour uses, from real data already in the repository.

Run from the repository root::

    python examples/make_inputs.py

``examples/sequences.fa`` (for ``genoserve predict binding`` and the ``binding.score_fasta`` job)
    Eight 101 bp windows (the input length of the ``deepbind-*`` and ``pwm-*`` models) of real
    human sequence, UCSC hg19 chr20, read from DeepVariant's test reference
    (``tests/data/deepvariant/ucsc.hg19.chr20.unittest.fasta.gz``). The windows start every 25 kb
    from chr20:10,900,001, inside chr20:10,895,000-11,095,000, a region the binding models never
    saw in training (their held-out test backgrounds come from it). Each record's id is its
    1-based, inclusive region. Two more records are the first window with instances of a JASPAR
    consensus written over it, the positive grammar the ``deepbind-ctcf`` model learned: three
    CTCF sites (a homotypic cluster: ``...+CTCFx3``) and CTCF followed 1 bp later by YY1 on the
    same strand (the preferred pair: ``...+CTCF_YY1``). Their ids say that they were edited, so
    that no one reads them as genome sequence.

``examples/pbmc_10x.h5`` (for ``genoserve predict embedding`` and the ``embedding.embed_h5ad`` job)
    The 700 real PBMCs x 765 genes of ``tests/data/embedding/pbmc68k_reduced_counts_700x765.h5ad``
    (raw integer counts; see that folder's README for where they come from) written in the layout of
    a 10x Genomics Cell Ranger >= 3 feature-barcode matrix (``matrix/{barcodes, data, indices, indptr,
    shape, features/{id, name, feature_type, genome}}``, CSC over genes x barcodes, i.e. one column
    per cell), so that its gene names are the genes of ``models/scvi-pbmc`` (an overlap of 100 %).
    The genes are written in reverse order: genoserve matches genes by name, never by position.
    The source has gene symbols only, so ``features/id`` repeats the symbol (Cell Ranger writes
    Ensembl ids there; genoserve reads ``features/name``) and ``features/genome`` says hg19, the
    genome the 68k PBMC data set was aligned to. Barcodes are the source's cell names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pysam
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "data" / "deepvariant" / "ucsc.hg19.chr20.unittest.fasta.gz"
PBMC = REPO / "tests" / "data" / "embedding" / "pbmc68k_reduced_counts_700x765.h5ad"
FASTA_OUT = REPO / "examples" / "sequences.fa"
TENX_OUT = REPO / "examples" / "pbmc_10x.h5"

LENGTH = 101
FIRST_START = 10_900_001  # 1-based
STEP = 25_000
WINDOWS = 8
#: JASPAR consensus of CTCF (MA0139.2) and YY1 (MA0095.2), as recorded in models/deepbind-ctcf/model.yaml.
CTCF = "GCCACCAGGGGGCGC"
YY1 = "CAAGATGGCGGC"


def _written_over(window: str, edits: list[tuple[int, str]]) -> str:
    """``window`` with each (0-based offset, motif) written over it, same length."""
    bases = list(window)
    for offset, motif in edits:
        bases[offset : offset + len(motif)] = motif
    out = "".join(bases)
    assert len(out) == len(window)
    return out


def fasta_records() -> list[tuple[str, str]]:
    """(id, bases) of the example FASTA."""
    records: list[tuple[str, str]] = []
    with pysam.FastaFile(str(REFERENCE)) as fasta:
        for i in range(WINDOWS):
            start = FIRST_START + i * STEP
            bases = fasta.fetch("chr20", start - 1, start - 1 + LENGTH).upper()
            assert len(bases) == LENGTH
            assert "N" not in bases
            records.append((f"chr20:{start}-{start + LENGTH - 1}", bases))
    first_id, first = records[0]
    records.append((f"{first_id}+CTCFx3", _written_over(first, [(5, CTCF), (40, CTCF), (75, CTCF)])))
    records.append((f"{first_id}+CTCF_YY1", _written_over(first, [(30, CTCF), (30 + len(CTCF) + 1, YY1)])))
    return records


def write_fasta(path: Path) -> None:
    with path.open("w") as out:
        for name, bases in fasta_records():
            out.write(f">{name}\n{bases}\n")


def _strings(dataset: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in dataset[:]]


def write_10x(source: Path, path: Path) -> None:
    """The .h5ad's ``X`` (cells x genes, CSR) as a 10x Cell Ranger v3 .h5, genes in reverse order."""
    with h5py.File(source) as f:
        x = f["X"]
        cells_by_genes = sp.csr_matrix(
            (x["data"][:], x["indices"][:], x["indptr"][:]), shape=tuple(int(n) for n in x.attrs["shape"])
        )
        barcodes = _strings(f["obs/index"])
        genes = _strings(f["var/index"])
    order = np.arange(len(genes))[::-1]
    counts = cells_by_genes[:, order].tocsr()
    counts.sort_indices()
    data = counts.data.astype(np.int32)
    assert np.array_equal(data, counts.data), "counts must be integers"
    names = [genes[i] for i in order]
    # A CSR matrix of cells x genes is, read as CSC, the genes x cells matrix Cell Ranger stores.
    options: dict[str, Any] = {"compression": "gzip", "compression_opts": 9, "shuffle": True}
    with h5py.File(path, "w") as out:
        out.attrs["filetype"] = "matrix"
        out.attrs["version"] = np.int64(2)
        out.attrs["chemistry_description"] = "Single Cell 3' v3"
        matrix = out.create_group("matrix")
        matrix.create_dataset("barcodes", data=np.array(barcodes, dtype="S"), **options)
        matrix.create_dataset("data", data=data, **options)
        matrix.create_dataset("indices", data=counts.indices.astype(np.int64), **options)
        matrix.create_dataset("indptr", data=counts.indptr.astype(np.int64), **options)
        matrix.create_dataset("shape", data=np.array([len(names), len(barcodes)], dtype=np.int32))
        features = matrix.create_group("features")
        features.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
        features.create_dataset("id", data=np.array(names, dtype="S"), **options)
        features.create_dataset("name", data=np.array(names, dtype="S"), **options)
        features.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(names), dtype="S"), **options)
        features.create_dataset("genome", data=np.array(["hg19"] * len(names), dtype="S"), **options)


def main() -> None:
    write_fasta(FASTA_OUT)
    write_10x(PBMC, TENX_OUT)
    for path in (FASTA_OUT, TENX_OUT):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
