"""Peers: genoserve against KServe's and MLServer's Python model servers, on the same ONNX files.

Run from the repository root (``make bench`` does exactly this)::

    .venv/bin/python -m tests.bench.peers_bench [--rounds 5] [--duration 1.5] [--warmup 0.5]
        [--cases mlp-1x64,...] [--servers genoserve,kserve,mlserver,ort] [--baseline DIR]

The first run creates two bench-only virtualenvs (gitignored) with ``python -m venv`` and pip:
``.venv-bench-kserve`` (KServe 0.21's Python model server: a ``kserve.Model`` running the ONNX
Runtime session inline in ``predict``, no batching, ``tests/bench/peers/kserve_server.py``) and
``.venv-bench-mlserver`` (MLServer 1.7: a custom runtime running the session, adaptive batching
on, ``tests/bench/peers/mlserver_server.py``), each with this venv's onnxruntime version. Every
server runs the committed ``models/platform-mlp`` and ``models/deepbind-ctcf`` ONNX files with
genoserve's session options (all graph optimisations, no spinning, the intra-op threads genoserve's
placement picks) and its default settings otherwise.

One load generator (this process, ``grpc.aio``, one channel per server) drives the three servers
through the same call, the Open Inference Protocol's ``inference.GRPCInferenceService/ModelInfer``
with ``raw_input_contents``; genoserve's native ``Models/Infer`` and, on deepbind-ctcf,
``SequenceBinding/Predict`` (the same sequences as text, forward strand: the same session work)
are extra rows. Raw ONNX Runtime in this process is the ceiling (256 rows: back-to-back calls, from
1 or 8 threads; 1 row: 64-row calls, "batched", and 1-row calls, "unbatched"). Cases: 256 rows per
request at 1 and 8 requests in flight, and 1 row at 64 in flight, on each model. Each point warms
up, then counts answered rows for ``--duration`` seconds; within a round the servers take turns
case by case, their order rotated from case to case and round to round; tables give medians over
rounds, and genoserve / KServe is the median of the per-round ratios (with their range: a ratio
inside it is noise). Server CPU per request (all its threads, from /proc) is recorded too. The
load generator and every server share this machine's cores; the load average is recorded.

``--baseline DIR`` adds a second genoserve whose package comes from ``DIR/services`` (a git
worktree of the commit to compare, with its generated stubs): a change is measured side by side.

Outputs: ``tests/bench/results/peers.json`` and ``tests/bench/results/peers.md`` (also printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from genoserve.api.codecs.tensor import from_numpy
from genoserve.binding.encoding import one_hot
from genoserve.core.settings import RuntimeSettings
from genoserve.inference import open_inference_pb2 as oip
from genoserve.inference import open_inference_pb2_grpc
from genoserve.runtime.placement import placement
from genoserve.v1 import binding_pb2, binding_pb2_grpc, models_pb2, models_pb2_grpc
from tests.bench.peers.session import make_session
from tests.bench.report import run_info
from tests.support.cpu import process_cpu_s
from tests.support.server import REPO, ServerProcess, free_port

Array = np.ndarray[Any, Any]
Call = Callable[[], Awaitable[Any]]

RESULTS = REPO / "tests" / "bench" / "results"
MODELS = {"platform-mlp": "mlp", "deepbind-ctcf": "ctcf"}
KSERVE = "kserve==0.21.0"
MLSERVER = "mlserver==1.7.1"
#: What a server that answers none of a model's calls (Predict on platform-mlp) shows.
NONE = "-"


# -- bench-only virtualenvs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Venv:
    """A bench-only virtualenv under the repository root with ``packages`` and this venv's onnxruntime."""

    folder: str
    packages: tuple[str, ...]

    @property
    def python(self) -> Path:
        return REPO / self.folder / "bin" / "python"

    def ensure(self) -> None:
        """Create and install it unless its marker says it has these packages already."""
        wanted = " ".join([*self.packages, f"onnxruntime=={ort.__version__}"])
        marker = REPO / self.folder / ".bench-installed"
        if marker.is_file() and marker.read_text().strip() == wanted and self.python.exists():
            return
        print(f"creating {self.folder} ({wanted}); once, it takes a few minutes", flush=True)
        shutil.rmtree(REPO / self.folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(REPO / self.folder)], check=True)
        pip = [str(self.python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *wanted.split()], check=True)
        marker.write_text(wanted + "\n")


VENVS = {"kserve": Venv(".venv-bench-kserve", (KSERVE,)), "mlserver": Venv(".venv-bench-mlserver", (MLSERVER,))}


# -- servers ----------------------------------------------------------------------------------------


class PeerProcess:
    """A peer model server started with its venv's Python; ready when ModelReady says so for each model."""

    def __init__(self, name: str, args: list[str], grpc_port: int, log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.args = args
        self.address = f"127.0.0.1:{grpc_port}"
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> PeerProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env)
        return self

    def wait_ready(self, models: list[str], timeout: float = 180.0) -> None:
        end = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < end:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log()}")
                try:
                    if all(stub.ModelReady(oip.ModelReadyRequest(name=m), timeout=1.0).ready for m in models):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def model_args(models: list[str]) -> list[str]:
    return [arg for m in models for arg in ("--model", f"{m}={REPO / 'models' / m / '1' / 'model.onnx'}")]


def kserve_process(models: list[str], threads: int) -> PeerProcess:
    port = free_port()
    args = [str(VENVS["kserve"].python), "-m", "tests.bench.peers.kserve_server", "--grpc-port", str(port)]
    args += ["--http-port", str(free_port()), "--intra-op-threads", str(threads), *model_args(models)]
    return PeerProcess("KServe", args, port, RESULTS / "peers-kserve.log")


def mlserver_process(models: list[str], threads: int) -> PeerProcess:
    port = free_port()
    args = [str(VENVS["mlserver"].python), "-m", "tests.bench.peers.mlserver_server", "--grpc-port", str(port)]
    args += ["--http-port", str(free_port()), "--metrics-port", str(free_port())]
    args += ["--intra-op-threads", str(threads), *model_args(models)]
    return PeerProcess("MLServer", args, port, RESULTS / "peers-mlserver.log")


def genoserve_process(models: list[str], log_name: str, source: Path | None = None) -> ServerProcess:
    """``genoserve serve`` with its defaults; ``source``: import the package from ``source/services``."""
    env = {"PYTHONPATH": str(source / "services")} if source is not None else None
    args = [arg for m in models for arg in ("--model", m)]
    return ServerProcess(*args, env=env, log_path=RESULTS / log_name)


# -- requests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    model: str
    rows: int
    in_flight: int

    @property
    def title(self) -> str:
        what = "sequence" if self.model == "deepbind-ctcf" and self.rows == 1 else "row"
        size = f"{self.rows} x 101" if self.model == "deepbind-ctcf" and self.rows > 1 else f"{self.rows} {what}"
        if self.rows > 1 and self.model == "platform-mlp":
            size += "s"
        return f"{self.model}, {size}, {self.in_flight} in flight"


CASES = [
    Case(f"{MODELS[model]}-{rows}x{flight}", model, rows, flight)
    for model in MODELS
    for rows, flight in ((256, 1), (256, 8), (1, 64))
]


@dataclass
class Inputs:
    """One model's request data: the input array (256 rows) and, for deepbind, the sequences."""

    name: str
    array: Array
    sequences: list[str] = field(default_factory=list)


def make_inputs(model: str, rows: int = 256) -> Inputs:
    rng = np.random.default_rng(0)
    if model == "platform-mlp":
        return Inputs("x", rng.normal(size=(rows, 128)).astype(np.float32))
    sequences = ["".join(rng.choice(list("ACGT"), size=101)) for _ in range(rows)]
    return Inputs("x", np.ascontiguousarray(one_hot(sequences), dtype=np.float32), sequences)


def oip_request(model: str, inputs: Inputs, rows: int) -> oip.ModelInferRequest:
    array = inputs.array[:rows]
    tensor = oip.ModelInferRequest.InferInputTensor(name=inputs.name, datatype="FP32", shape=list(array.shape))
    return oip.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[array.tobytes()])


def oip_output(response: oip.ModelInferResponse) -> Array:
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(tuple(response.outputs[0].shape))


@dataclass(frozen=True)
class Target:
    """One row source of the table: a server and the call it is driven with."""

    label: str
    server: str
    method: str  # "oip", "infer" or "predict"

    def applies(self, case: Case) -> bool:
        return self.method != "predict" or case.model == "deepbind-ctcf"


def make_call(
    target: Target, channel: grpc.aio.Channel, case: Case, inputs: Inputs
) -> tuple[Call, Callable[[Any], Array]]:
    """The call for ``case`` on ``channel``, and how to read the first output (rows x outputs) from its answer."""
    if target.method == "oip":
        request = oip_request(case.model, inputs, case.rows)
        infer = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        return (lambda: infer(request, timeout=60)), oip_output
    if target.method == "infer":
        native = models_pb2.InferRequest(model=case.model, inputs={inputs.name: from_numpy(inputs.array[: case.rows])})
        call = models_pb2_grpc.ModelsStub(channel).Infer

        def infer_output(response: models_pb2.InferResponse) -> Array:
            tensor = next(iter(response.outputs.values()))
            return np.frombuffer(tensor.data, np.float32).reshape(tuple(tensor.shape))

        return (lambda: call(native, timeout=60)), infer_output
    sequences = [binding_pb2.Sequence(id=f"s{i}", bases=s) for i, s in enumerate(inputs.sequences[: case.rows])]
    predict = binding_pb2.PredictRequest(model=case.model, sequences=sequences, strand=binding_pb2.STRAND_FORWARD)
    stub = binding_pb2_grpc.SequenceBindingStub(channel).Predict

    def predict_output(response: binding_pb2.PredictResponse) -> Array:
        return np.array([list(r.logits) for r in response.results], np.float32)

    return (lambda: stub(predict, timeout=60)), predict_output


# -- measurement ----------------------------------------------------------------------------------


async def drive(call: Call, rows: int, in_flight: int, seconds: float, pid: int | None) -> dict[str, float]:
    """``in_flight`` tasks calling back to back for ``seconds``: rows/s, p50 latency, server CPU per request."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while (started := time.perf_counter()) < stop:
            await call()
            latencies.append(time.perf_counter() - started)

    cpu_before = process_cpu_s(pid) if pid else None
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - start
    cpu_after = process_cpu_s(pid) if pid else None
    point = {
        "rows_per_s": len(latencies) * rows / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "requests": float(len(latencies)),
    }
    if cpu_before is not None and cpu_after is not None and latencies:
        point["server_cpu_us_per_request"] = (cpu_after - cpu_before) / len(latencies) * 1e6
    return point


def raw_point(session: ort.InferenceSession, feeds: dict[str, Array], threads: int, seconds: float) -> dict[str, float]:
    """Session calls back to back from ``threads`` threads for ``seconds``: rows/s and p50."""
    rows = next(iter(feeds.values())).shape[0]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = time.perf_counter() + seconds

    def loop(mine: list[float]) -> None:
        while (started := time.perf_counter()) < stop:
            session.run(None, feeds)
            mine.append(time.perf_counter() - started)

    start = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(mine,)) for mine in latencies]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    flat = [x for mine in latencies for x in mine]
    return {"rows_per_s": len(flat) * rows / elapsed, "p50_ms": statistics.median(flat) * 1e3}


def raw_case(session: ort.InferenceSession, inputs: Inputs, case: Case, seconds: float) -> dict[str, Any]:
    if case.rows > 1:
        return raw_point(session, {inputs.name: inputs.array[: case.rows]}, case.in_flight, seconds)
    batched = raw_point(session, {inputs.name: inputs.array[: case.in_flight]}, 1, seconds / 2)
    unbatched = raw_point(session, {inputs.name: inputs.array[:1]}, 1, seconds / 2)
    return {**batched, "unbatched_rows_per_s": unbatched["rows_per_s"]}


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    targets: list[Target]
    cases: list[Case]
    threads: int
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    #: points[case key][target label] = one dict per round
    points: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)


Sessions = dict[str, ort.InferenceSession]


async def check_outputs(run: Run, inputs: dict[str, Inputs], sessions: Sessions) -> dict[str, float]:
    """Each server's answer to a 256-row request against raw ONNX Runtime's (max abs difference):
    they must serve the same model."""
    diffs: dict[str, float] = {}
    for model in {c.model for c in run.cases}:
        data = inputs[model]
        expected = sessions[model].run(None, {data.name: data.array})[0]
        case = Case("check", model, 256, 1)
        for target in run.targets:
            if target.server == "ort" or not target.applies(case):
                continue
            call, output = make_call(target, run.channels[target.server], case, data)
            got = output(await call()).reshape(expected.shape)
            diff = float(np.max(np.abs(got - expected)))
            if diff > 1e-3:
                raise AssertionError(f"{target.label} on {model}: outputs differ from raw ONNX Runtime by {diff}")
            diffs[f"{target.label} {model}"] = diff
    return diffs


async def one_round(run: Run, number: int, inputs: dict[str, Inputs], sessions: Sessions) -> None:
    args = run.args
    for index, case in enumerate(run.cases):
        targets = [t for t in run.targets if t.applies(case)]
        shift = (number + index) % len(targets)
        for target in targets[shift:] + targets[:shift]:
            data = inputs[case.model]
            if target.server == "ort":
                point = raw_case(sessions[case.model], data, case, args.duration)
            else:
                call, _ = make_call(target, run.channels[target.server], case, data)
                await drive(call, case.rows, case.in_flight, args.warmup, None)
                point = await drive(call, case.rows, case.in_flight, args.duration, run.pids.get(target.server))
            run.points.setdefault(case.key, {}).setdefault(target.label, []).append(point)
            print(f"round {number + 1} {case.key:11} {target.label:22} {cell(point)}", flush=True)
    run.loads.append(os.getloadavg()[0])


async def measure(run: Run, addresses: dict[str, str]) -> dict[str, float]:
    inputs = {model: make_inputs(model) for model in MODELS}
    sessions = {m: make_session(REPO / "models" / m / "1" / "model.onnx", run.threads) for m in MODELS}
    for server, address in addresses.items():
        run.channels[server] = grpc.aio.insecure_channel(address)
    try:
        diffs = await check_outputs(run, inputs, sessions)
        for number in range(run.args.rounds):
            await one_round(run, number, inputs, sessions)
    finally:
        for channel in run.channels.values():
            await channel.close()
    return diffs


# -- the tables -----------------------------------------------------------------------------------


def rate(value: float) -> str:
    return f"{value / 1e3:.0f}k" if value >= 10e3 else f"{value / 1e3:.1f}k"


def cell(point: dict[str, Any]) -> str:
    text = f"{rate(point['rows_per_s'])} ({point['p50_ms']:.1f} ms)"
    if "unbatched_rows_per_s" in point:
        text = f"{rate(point['rows_per_s'])} batched / {rate(point['unbatched_rows_per_s'])} unbatched"
    return text


def median_point(points: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(p[key] for p in points) for key in points[0]}


def ratios(run: Run, case: Case, label: str, base: str, key: str = "rows_per_s") -> list[float]:
    """Per round: ``label``'s ``key`` over ``base``'s (both measured in that round)."""
    mine, theirs = run.points[case.key].get(label), run.points[case.key].get(base)
    if not mine or not theirs:
        return []
    return [a[key] / b[key] for a, b in zip(mine, theirs, strict=True) if key in a and key in b]


def ratio_text(values: list[float]) -> str:
    if not values:
        return NONE
    return f"**{statistics.median(values):.2f}** ({min(values):.2f} to {max(values):.2f})"


def table(run: Run) -> tuple[str, dict[str, Any]]:
    labels = [t.label for t in run.targets]
    ratio_pairs = [
        (label, "KServe") for label in ("genoserve", "genoserve Infer", "genoserve @baseline") if label in labels
    ]
    if "genoserve @baseline" in labels:
        ratio_pairs.append(("genoserve", "genoserve @baseline"))
    head = ["model, case: rows/s (p50)", *labels, *(f"{a} / {b}" for a, b in ratio_pairs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    served = [t.label for t in run.targets if t.server != "ort"]
    cpu_head = ["case", *served, *(f"{a} / {b}" for a, b in ratio_pairs)]
    cpu_lines = ["| " + " | ".join(cpu_head) + " |", "|" + "---|" * len(cpu_head)]
    medians: dict[str, Any] = {}
    for case in run.cases:
        points = run.points.get(case.key, {})
        medians[case.key] = {label: median_point(p) for label, p in points.items()}
        cells = [cell(medians[case.key][label]) if label in points else NONE for label in labels]
        cells += [ratio_text(ratios(run, case, a, b)) for a, b in ratio_pairs]
        lines.append(f"| {case.title} | " + " | ".join(cells) + " |")
        cpu = [
            f"{medians[case.key][t.label]['server_cpu_us_per_request']:.0f}"
            if t.label in points and "server_cpu_us_per_request" in medians[case.key][t.label]
            else NONE
            for t in run.targets
            if t.server != "ort"
        ]
        cpu += [ratio_text(ratios(run, case, a, b, "server_cpu_us_per_request")) for a, b in ratio_pairs]
        cpu_lines.append(f"| {case.title} | " + " | ".join(cpu) + " |")
    args = run.args
    notes = [
        "",
        f"Medians of {args.rounds} interleaved rounds of {args.duration:g} s per point (after {args.warmup:g} s of "
        f"warm-up); ratios: median of the per-round ratios (range in brackets). genoserve, KServe and MLServer: "
        "`inference.GRPCInferenceService/ModelInfer` with `raw_input_contents`; genoserve Infer: `Models/Infer`; "
        "genoserve Predict: `SequenceBinding/Predict`, the same sequences as text, forward strand. "
        f"ONNX Runtime {ort.__version__}, intra-op threads {run.threads or 'default (one per core)'}, no spinning, "
        f"in every server. 1-minute load average after each round: {', '.join(f'{x:.2f}' for x in run.loads)}.",
        "",
        "Server CPU per request (µs, all the server's threads, from /proc; lower is better), and its per-round "
        "ratios: less moved by the machine's other load than rows/s, which the load generator's share of the "
        "cores also sets.",
        "",
        *cpu_lines,
    ]
    return "\n".join(lines + notes), medians


def targets_for(servers: list[str], baseline: Path | None) -> list[Target]:
    targets = []
    if "ort" in servers:
        targets.append(Target("raw ORT", "ort", "ort"))
    if "genoserve" in servers:
        targets += [
            Target("genoserve", "genoserve", "oip"),
            Target("genoserve Infer", "genoserve", "infer"),
            Target("genoserve Predict", "genoserve", "predict"),
        ]
    if baseline is not None:
        targets.append(Target("genoserve @baseline", "baseline", "oip"))
    if "kserve" in servers:
        targets.append(Target("KServe", "kserve", "oip"))
    if "mlserver" in servers:
        targets.append(Target("MLServer", "mlserver", "oip"))
    return targets


@contextmanager
def servers_running(
    servers: list[str], models: list[str], threads: int, baseline: Path | None
) -> Iterator[dict[str, Any]]:
    """Start every server at once, wait until each is ready; ``{server: process}``."""
    with ExitStack() as stack:
        started: dict[str, Any] = {}
        if "genoserve" in servers:
            started["genoserve"] = genoserve_process(models, "peers-genoserve.log")
        if baseline is not None:
            started["baseline"] = genoserve_process(models, "peers-baseline.log", baseline)
        if "kserve" in servers:
            started["kserve"] = kserve_process(models, threads)
        if "mlserver" in servers:
            started["mlserver"] = mlserver_process(models, threads)
        for process in started.values():
            if isinstance(process, ServerProcess):
                process.start(wait=False)
                stack.callback(process.terminate)
            else:
                process.start()
                stack.callback(process.stop)
        for process in started.values():
            if isinstance(process, ServerProcess):
                process.wait_serving(timeout=120)
            else:
                process.wait_ready(models)
        yield started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=1.5, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per point")
    parser.add_argument("--cases", default=",".join(c.key for c in CASES), help="comma-separated case keys")
    parser.add_argument("--servers", default="ort,genoserve,kserve,mlserver", help="comma-separated")
    parser.add_argument("--baseline", type=Path, help="a source tree whose genoserve runs as a second server")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if c.key in args.cases.split(",")]
    servers = args.servers.split(",")
    models = [m for m in MODELS if any(c.model == m for c in cases)]
    threads = placement(None, RuntimeSettings(), cpu=True, online=True).intra_op_threads
    for name, venv in VENVS.items():
        if name in servers:
            venv.ensure()
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = Run(args, targets_for(servers, args.baseline), cases, threads)
    load_at_start = os.getloadavg()[0]
    with servers_running(servers, models, threads, args.baseline) as started:
        run.pids = {name: int(p.proc.pid) for name, p in started.items()}
        addresses = {name: p.address for name, p in started.items()}
        diffs = asyncio.run(measure(run, addresses))
    text, medians = table(run)
    text = f"1-minute load average at the start: {load_at_start:.2f}.\n\n" + text
    print(text)
    (RESULTS / "peers.md").write_text(text + "\n")
    payload = {
        "run": run_info(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": {"onnxruntime": ort.__version__, "kserve": KSERVE, "mlserver": MLSERVER},
        "intra_op_threads": threads,
        "load_average_at_start": load_at_start,
        "load_average_after_rounds": run.loads,
        "max_abs_diff_vs_raw_ort": diffs,
        "points": run.points,
        "medians": medians,
    }
    (RESULTS / "peers.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
