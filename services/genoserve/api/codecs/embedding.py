"""genoserve.v1 embedding messages <-> the embedding family's arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from genoserve.api.codecs.tensor import from_numpy, to_numpy
from genoserve.core.errors import InvalidArgument
from genoserve.embedding.counts import Counts, CsrCounts
from genoserve.embedding.genes import SHOWN_MISSING, GeneAlignment
from genoserve.v1 import embedding_pb2

Array = np.ndarray[Any, Any]


def counts(message: embedding_pb2.CountMatrix, field: str = "counts") -> Counts:
    """The CSR or dense matrix of a CountMatrix (arrays are read-only views of the message)."""
    which = message.WhichOneof("values")
    if which is None:
        raise InvalidArgument.field(field, "give the counts as csr or dense")
    n_genes = len(message.gene_names)
    if which == "dense":
        return to_numpy(message.dense, f"{field}.dense")
    csr = message.csr
    return CsrCounts(
        indptr=to_numpy(csr.indptr, f"{field}.csr.indptr"),
        indices=to_numpy(csr.indices, f"{field}.csr.indices"),
        data=to_numpy(csr.data, f"{field}.csr.data"),
        n_genes=n_genes,
    )


def csr_message(indptr: Array, indices: Array, data: Array) -> embedding_pb2.CsrMatrix:
    return embedding_pb2.CsrMatrix(indptr=from_numpy(indptr), indices=from_numpy(indices), data=from_numpy(data))


def gene_overlap(alignment: GeneAlignment) -> embedding_pb2.GeneOverlap:
    return embedding_pb2.GeneOverlap(
        model_genes=alignment.n_model_genes, matched=alignment.matched, extra=alignment.extra,
        fraction=alignment.overlap, missing_genes=list(alignment.missing[:SHOWN_MISSING]),
        missing_count=len(alignment.missing),
    )  # fmt: skip


def embed_response(
    model: str, version: str, cell_ids: list[str], latent: Array, variances: Array | None, alignment: GeneAlignment
) -> embedding_pb2.EmbedResponse:
    response = embedding_pb2.EmbedResponse(
        model=model, version=version, cell_ids=cell_ids, latent=from_numpy(latent),
        gene_overlap=gene_overlap(alignment),
    )  # fmt: skip
    if variances is not None:
        response.variances.CopyFrom(from_numpy(variances))
    return response


def inherit(first: embedding_pb2.EmbedRequest, later: embedding_pb2.EmbedRequest) -> embedding_pb2.EmbedRequest:
    """A stream message with the first message's values where it leaves them empty."""
    merged = embedding_pb2.EmbedRequest(
        model=later.model or first.model,
        version=later.version or first.version,
        batch_labels=later.batch_labels,
        min_gene_overlap=later.min_gene_overlap or first.min_gene_overlap,
        not_raw_counts=later.not_raw_counts or first.not_raw_counts,
        return_variances=later.return_variances or first.return_variances,
    )
    merged.counts.CopyFrom(later.counts)
    if not later.counts.gene_names:
        merged.counts.gene_names.extend(first.counts.gene_names)
    return merged
