"""``AsyncClient`` answers as ``Client`` does: every unary method, called with the same arguments
on the same real server, gives the same result or raises the same genoserve error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from genoserve.client import AsyncClient, Client
from genoserve.core.errors import GenoserveError
from genoserve.v1 import binding_pb2
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "deepvariant" / "ucsc.hg19.chr20.unittest.fasta.gz"
SITE = "TTGGCCACTAGGGGGCGCTA"  # CTCF's consensus, in a neutral background
SEQUENCE = "A" * 40 + SITE + "A" * 41
VARIANT = binding_pb2.Variant(id="v", chrom="chr20", pos=10_000_100, ref="T", alt="A")

CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("health", (), {}),
    ("list_models", (), {}),
    ("list_models", ("binding",), {}),
    ("get_model", ("pwm-ctcf",), {}),
    ("get_model", ("no-such-model",), {}),
    ("infer", ("platform-mlp", {"x": np.random.default_rng(0).normal(size=(3, 128)).astype(np.float32)}), {}),
    ("predict_sequences", ("pwm-ctcf", [("site", SEQUENCE), ("none", "C" * 101)]), {"strand": "forward"}),
    ("predict_sequences", ("pwm-ctcf", [("bad", "ACGQ" * 25 + "A")]), {}),
    ("mutagenesis", ("pwm-ctcf", "site", SEQUENCE), {"crop": True}),
    ("score_variants", ("pwm-ctcf", [VARIANT]), {"reference": "hg19"}),
    ("score_variants", ("pwm-ctcf", []), {"reference": "hg38"}),
    ("load_model", ("pwm-ctcf",), {}),
    ("repository_index", (), {}),
    ("get_job", ("j0000000000000000",), {}),
    ("list_jobs", (), {}),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("async-client")
    references = json.dumps({"hg19": str(REFERENCE)})
    process = ServerProcess(
        "--model", "platform-mlp", "--model", "pwm-ctcf",
        env={"GENOSERVE_BINDING__REFERENCES": references, "GENOSERVE_JOBS__DATA_DIR": str(root / "jobs")},
        log_path=root / "server.log",
    )  # fmt: skip
    with process:
        yield process


def _outcome(result: Any) -> Any:
    if isinstance(result, dict):  # infer: {output name: array}
        return {name: array.tolist() for name, array in result.items()}
    return result


def _error(exc: GenoserveError) -> tuple[Any, ...]:
    return type(exc), exc.code, exc.message, getattr(exc, "violations", None)


@pytest.mark.parametrize(("method", "args", "kwargs"), CALLS, ids=[f"{i}-{c[0]}" for i, c in enumerate(CALLS)])
async def test_async_client_answers_as_the_blocking_client(
    server: ServerProcess, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with Client(server.address, timeout=60) as blocking:
        try:
            expected: Any = _outcome(getattr(blocking, method)(*args, **kwargs))
        except GenoserveError as exc:
            expected = _error(exc)
    async with AsyncClient(server.address, timeout=60) as asynchronous:
        try:
            got: Any = _outcome(await getattr(asynchronous, method)(*args, **kwargs))
        except GenoserveError as exc:
            got = _error(exc)
    assert got == expected


def _rows(n: int) -> list[dict[str, np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(3)
    rows: list[dict[str, np.ndarray[Any, Any]]] = [
        {"x": rng.normal(size=(1, 128)).astype(np.float32)} for _ in range(n)
    ]
    rows[5] = {"x": np.ones((1, 7), np.float32)}  # the wrong width: this request alone fails
    return rows


def _answers(answers: list[Any]) -> dict[int, Any]:
    return {n: _error(a) if isinstance(a, GenoserveError) else _outcome(a) for n, a in answers}


async def test_infer_stream_answers_every_request_by_its_number(server: ServerProcess) -> None:
    rows = _rows(40)
    with Client(server.address, timeout=60) as client:
        blocking = _answers(list(client.infer_stream("platform-mlp", rows)))
        one_by_one = {n: _outcome(client.infer("platform-mlp", r)) for n, r in enumerate(rows) if n != 5}
    async with AsyncClient(server.address, timeout=60) as client:
        asynchronous = _answers([a async for a in client.infer_stream("platform-mlp", rows)])
    assert sorted(blocking) == sorted(asynchronous) == list(range(40))
    assert asynchronous.pop(5) == blocking[5]
    kind, code, message, _ = blocking.pop(5)
    assert (kind.__name__, code) == ("InvalidArgument", "INVALID_ARGUMENT")
    assert "inputs[x]" in message
    for n, outputs in blocking.items():  # as the unary call answers, row by row
        np.testing.assert_allclose(outputs["y"], one_by_one[n]["y"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(asynchronous[n]["y"], outputs["y"], rtol=1e-5, atol=1e-6)


async def test_predict_stream_answers_each_batch_in_order(server: ServerProcess) -> None:
    batches = [[(f"s{i}", SEQUENCE if i % 2 else "C" * 101)] for i in range(12)]
    with Client(server.address, timeout=60) as client:
        streamed = [r.results[0] for r in client.predict_stream("pwm-ctcf", batches, strand="forward")]
        unary = client.predict_sequences("pwm-ctcf", [b[0] for b in batches], strand="forward").results
        bad = [*batches[:3], [("bad", "ACGQ" * 25 + "A")], *batches[3:]]
        with pytest.raises(GenoserveError) as caught:
            list(client.predict_stream("pwm-ctcf", bad))
    async with AsyncClient(server.address, timeout=60) as client:
        asynchronous = [r.results[0] async for r in client.predict_stream("pwm-ctcf", batches, strand="forward")]
    assert [r.id for r in streamed] == [f"s{i}" for i in range(12)]  # in request order
    assert [list(r.scores) for r in streamed] == [list(r.scores) for r in unary]
    assert asynchronous == streamed
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message.startswith("batch 3: ")
