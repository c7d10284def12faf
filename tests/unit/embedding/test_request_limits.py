"""Embed request limits: cells, and the dense values they are laid out as, checked before layout."""

from __future__ import annotations

import numpy as np
import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import EmbeddingSettings
from genoserve.embedding.contract import EmbeddingContract
from genoserve.embedding.counts import CsrCounts
from genoserve.embedding.request import check_size, prepare

GENES = tuple(f"g{i}" for i in range(100))
MODEL = EmbeddingContract(genes=GENES, batches=(), n_latent=4, batch_key="")


def empty(n_cells: int) -> CsrCounts:
    return CsrCounts(np.zeros(n_cells + 1, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), len(GENES))


def test_defaults_take_the_benchmark_and_cli_chunks() -> None:
    defaults = EmbeddingSettings()
    check_size(4096, 2000, defaults.max_cells, defaults.max_dense_values)  # tests/bench/embedding_bench.py
    check_size(4096, 765, defaults.max_cells, defaults.max_dense_values)  # `genoserve predict embedding --chunk`


def test_cells_over_the_limit_are_refused_before_the_layout() -> None:
    with pytest.raises(InvalidArgument) as info:
        prepare(MODEL, list(GENES), empty(60_000), max_cells=16_384)
    [violation] = info.value.violations
    assert violation.field == "counts"
    assert violation.description.startswith("60000 cells exceeds embedding.max_cells = 16384 per request")


def test_dense_values_count_the_models_genes() -> None:
    """Memory is cells x the model's genes, whatever the request's own gene count."""
    with pytest.raises(InvalidArgument, match=r"11 cells x 100 model genes = 1100 dense values exceeds "
                                              r"embedding\.max_dense_values = 1000"):  # fmt: skip
        prepare(MODEL, ["g0", *GENES[1:]], empty(11), max_dense_values=1000)
    assert prepare(MODEL, list(GENES), empty(10), max_dense_values=1000).n_cells == 10


def test_no_limits_for_callers_that_give_none() -> None:
    assert prepare(MODEL, list(GENES), empty(20_000)).n_cells == 20_000  # bulk jobs chunk by themselves
