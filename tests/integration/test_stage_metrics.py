"""Per-stage latency on /metrics: one request to each family's RPC on a real server (the committed
models) is observed in genoserve_stage_duration_seconds under its family, once per stage; a
request refused before its model runs leaves the infer stage alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genoserve.api.codecs.variants import pileup_example
from genoserve.client import Client
from genoserve.core.errors import InvalidArgument
from genoserve.variants.examples import read_examples
from tests.support.server import ServerProcess, metric, scrape

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "deepvariant" / "golden.calling_examples.tfrecord.gz"
STAGES = ("preprocess", "infer", "postprocess")
NAME = "genoserve_stage_duration_seconds"


def counts(server: ServerProcess, family: str) -> dict[str, float]:
    text = scrape(server)
    return {stage: metric(text, f"{NAME}_count", family=family, stage=stage) for stage in STAGES}


def test_each_family_observes_its_three_stages_once_per_request(server: ServerProcess) -> None:
    before = {f: counts(server, f) for f in ("binding", "variants", "segmentation", "embedding")}
    rng = np.random.default_rng(0)
    with Client(server.address) as client:
        client.predict_sequences("deepbind-ctcf", [("s1", "ACGT" * 30), ("s2", "GATTACA" * 20)], crop=True)
        client.call_variants([pileup_example(e, str(i)) for i, e in enumerate(list(read_examples(GOLDEN))[:5])])
        client.segment("cellpose-nuclei", rng.integers(0, 255, (64, 64), dtype=np.uint8))
        [embedding] = [m for m in client.list_models(family="embedding") if m.name == "scvi-pbmc"]
        genes = list(embedding.inputs[0].labels)
        client.embed("scvi-pbmc", genes, rng.poisson(0.5, (4, len(genes))).astype(np.int32))
    for family, was in before.items():
        now = counts(server, family)
        assert {s: now[s] - was[s] for s in STAGES} == dict.fromkeys(STAGES, 1.0), family
    text = scrape(server)
    buckets = [line for line in text.splitlines() if line.startswith(f'{NAME}_bucket{{family="variants"')]
    assert any('le="0.0005"' in line for line in buckets)  # milliseconds ..
    assert any('le="60.0"' in line for line in buckets)  # .. to a minute
    assert metric(text, f"{NAME}_sum", family="variants", stage="infer") > 0


def test_a_request_refused_in_preprocessing_is_not_observed_past_it(server: ServerProcess) -> None:
    before = counts(server, "variants")
    bad = pileup_example(next(iter(read_examples(GOLDEN))))
    bad.pileup.shape[:] = [221, 100, 7]
    with Client(server.address) as client, pytest.raises(InvalidArgument):
        client.call_variants([bad])
    assert counts(server, "variants") == before
