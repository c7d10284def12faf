"""Segmentation benchmark: mask reconstruction speed and the Segment call's latency.

Run from the repository root::

    .venv/bin/python -m tests.bench.segmentation_bench [--requests 20]

One run measures, with the committed model ``models/cellpose-nuclei``:

* **mask reconstruction** (``genoserve.segmentation.dynamics.compute_masks``, Cellpose's default
  parameters: niter 200, cellprob_threshold 0, flow_threshold 0.4, min_size 15) on the network's
  flows and cell probabilities for a simulated 512x512 image (142 nuclei; median of 5 runs),
  against the simple per-pixel reference (``tests/bench/segmentation_reference.py``: the same
  algorithm with a Python loop per pixel, one run): time of each, the ratio, and agreement
  (AP@0.5 of ours against the reference's masks); plus ours alone on 2048x2048;
* **Cellpose's own** ``cellpose.dynamics.compute_masks`` (4.2.1.1, CPU, torch threads 2), timed
  interleaved with ours (ours, theirs, ours, ...; medians) so both see the same load, on the same
  flows (x5, its network scale) and probabilities, 512x512 and 2048x2048, when ``--cellpose-site``
  names a folder it is installed in. Cellpose imports torchvision, whose PyPI build does not load
  beside the CPU torch here, so it goes into its own folder without dependencies (torch, numpy and
  scipy come from this environment; torchvision is stubbed, only ``cellpose.dynamics`` is called)::

      .venv/bin/pip install --no-deps --target /tmp/cellpose-site cellpose==4.2.1.1 \
          opencv-python-headless fastremap fill-voids tqdm

  Time ratio and agreement (AP@0.5 of ours against Cellpose's masks); the issue's goal is >= 5x
  faster with agreement >= 0.95.
* **peak memory on large images** (``tests/bench/segmentation_memory.py``, one process per
  measurement, peak RSS): blocked vs whole-image mask reconstruction on exact flows of a tiled
  synthetic image (``--memory-size``, default 4096), blocked reconstruction alone at
  ``--large-size`` (default 10240, i.e. 10k x 10k), and the whole pipeline with the model at
  ``--memory-size``; ``--large-size 0`` skips the large run;
* **Segment latency**: p50 / p90 of ``Client.segment`` on a 512x512 uint16 image against a real
  ``genoserve serve`` on loopback (sequential requests), next to the same work done locally
  (ONNX Runtime forward over the tiles + reconstruction) as the floor, and images/s of each.

Outputs ``tests/bench/results/segmentation.json`` and ``.md`` (also printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from genoserve.client import Client
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime.registry import read_spec
from genoserve.runtime.session import OrtSession
from genoserve.segmentation import dynamics, metrics
from genoserve.segmentation.contract import SegmentationContract
from genoserve.segmentation.follow_graph import GRAPH_PATH, OnnxFollower
from genoserve.segmentation.pipeline import prepare, segment_sync
from genoserve.segmentation.tiling import run_tiled
from genoserve.training.segmentation.simulator import SimConfig, simulate
from tests.bench.report import run_info
from tests.bench.segmentation_reference import reference_compute_masks
from tests.support.server import REPO, ServerProcess

Array = np.ndarray[Any, Any]
MODEL = "cellpose-nuclei"
RESULTS = REPO / "tests" / "bench" / "results"


def network_outputs(forward: Any, contract: SegmentationContract, image: Array) -> tuple[Array, Array]:
    prepared = prepare(image[None].astype(np.float32), contract, 0.0)
    out = run_tiled(prepared.network_input, contract.tile, contract.overlap, 8, forward, contract.size_multiple)
    top, bottom, left, right = prepared.crop  # the contract's padding, as pipeline.finish crops it
    out = out[:, top : out.shape[1] - bottom, left : out.shape[2] - right]
    return np.ascontiguousarray(out[:2]), np.ascontiguousarray(out[2])


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def load_cellpose(site: Path) -> Any:
    """``cellpose.dynamics`` from ``site`` with torchvision stubbed (see the module docstring)."""
    import sys
    import types

    sys.path.insert(0, str(site))
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.transforms._functional_tensor"]  # fmt: skip
    stubs = {name: types.ModuleType(name) for name in names}
    stubs["torchvision"].transforms = stubs["torchvision.transforms"]  # type: ignore[attr-defined]
    stubs["torchvision.transforms"].functional = stubs["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    stubs["torchvision.transforms"]._functional_tensor = stubs["torchvision.transforms._functional_tensor"]  # type: ignore[attr-defined]
    for name, module in stubs.items():
        sys.modules.setdefault(name, module)
    import torch
    from cellpose import dynamics as cellpose_dynamics

    torch.set_num_threads(2)
    return cellpose_dynamics


def cellpose_masks(module: Any, flows: Array, cellprob: Array) -> Array:
    out = module.compute_masks(flows * 5.0, cellprob, niter=200, cellprob_threshold=0.0, flow_threshold=0.4,
                               min_size=15)  # fmt: skip
    return np.asarray(out[0] if isinstance(out, tuple) else out)


def sim_image(size: int, seed: int) -> tuple[Array, Array]:
    # The images the README figures were measured on (no tiny nuclei, round cell bodies).
    config = SimConfig(
        size=(size, size), diameter=(14.0, 22.0), coverage=(0.12, 0.15), tiny_fraction=0.0, cytoplasm_elongation=1.0
    )
    return simulate(np.random.default_rng(seed), config)


def memory_run(mode: str, size: int) -> dict[str, Any]:
    """One ``tests.bench.segmentation_memory`` measurement in its own process (its own peak RSS)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.segmentation_memory", "--mode", mode, "--size", str(size)],
        capture_output=True, text=True, cwd=REPO, env=env, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"memory: {result}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--cellpose-site", type=Path, default=None, help="folder with cellpose installed (--target)")
    parser.add_argument("--memory-size", type=int, default=4096, help="side of the blocked/whole memory comparison")
    parser.add_argument("--large-size", type=int, default=10240, help="side of the large blocked run (0: skip)")
    args = parser.parse_args(argv)
    spec = read_spec(REPO / "models" / MODEL)
    contract = SegmentationContract.of(spec)
    session = ort.InferenceSession(
        str(REPO / "models" / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    def forward(batch: Array) -> Array:
        return np.asarray(session.run(None, {contract.input: batch})[0])

    results: dict[str, Any] = {
        "run": run_info(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "model": MODEL,
        "load_average_start": os.getloadavg(),
    }  # fmt: skip

    # -- mask reconstruction, 512x512 ------------------------------------------------------------
    image, truth = sim_image(512, seed=7)
    flows, cellprob = network_outputs(forward, contract, image)
    ours_s, ours = timed(lambda: dynamics.compute_masks(flows, cellprob), 5)
    print(f"512x512: ours {ours_s * 1000:.1f} ms, {int(ours.max())} masks; running the per-pixel reference ...")
    graph = OnnxFollower(OrtSession(GRAPH_PATH, RuntimeSettings(device="cpu")))
    graph_s, graph_masks = timed(lambda: dynamics.compute_masks(flows, cellprob, follow=graph), 3)
    ref_s, ref = timed(lambda: reference_compute_masks(flows, cellprob), 1)
    agreement = metrics.average_precision(ref, ours, (0.5,))[0.5][0]
    results["reconstruction_512"] = {
        "true_cells": int(truth.max()), "ours_cells": int(ours.max()), "reference_cells": int(ref.max()),
        "ours_ms": ours_s * 1000, "reference_ms": ref_s * 1000, "speedup": ref_s / ours_s,
        "agreement_ap50_vs_reference": agreement,
        "ap50_vs_truth_ours": metrics.average_precision(truth, ours, (0.5,))[0.5][0],
        "onnx_graph_cpu_ms": graph_s * 1000,
        "onnx_graph_agreement_ap50": metrics.average_precision(ours, graph_masks, (0.5,))[0.5][0],
    }  # fmt: skip
    # -- mask reconstruction, 2048x2048 ------------------------------------------------------------
    big, big_truth = sim_image(2048, seed=8)
    big_flows, big_prob = network_outputs(forward, contract, big)
    big_s, big_masks = timed(lambda: dynamics.compute_masks(big_flows, big_prob), 1)
    results["reconstruction_2048"] = {
        "true_cells": int(big_truth.max()), "ours_cells": int(big_masks.max()), "ours_ms": big_s * 1000,
    }  # fmt: skip
    # -- Cellpose's compute_masks on the same inputs ---------------------------------------------
    if args.cellpose_site is not None:
        # Interleaved (ours, theirs, ours, theirs, ...) so that both see the same machine load.
        module = load_cellpose(args.cellpose_site)
        cellpose_masks(module, flows, cellprob)  # torch warm-up
        pair: dict[str, list[float]] = {"ours": [], "theirs": [], "ours_big": [], "theirs_big": []}
        for _ in range(5):
            pair["ours"].append(timed(lambda: dynamics.compute_masks(flows, cellprob), 1)[0])
            cp_s, cp_masks = timed(lambda: cellpose_masks(module, flows, cellprob), 1)
            pair["theirs"].append(cp_s)
        for _ in range(3):
            pair["ours_big"].append(timed(lambda: dynamics.compute_masks(big_flows, big_prob), 1)[0])
            cp_big_s, cp_big = timed(lambda: cellpose_masks(module, big_flows, big_prob), 1)
            pair["theirs_big"].append(cp_big_s)
        med = {k: statistics.median(v) for k, v in pair.items()}
        results["cellpose_compute_masks"] = {
            "version": "4.2.1.1", "runs": {k: [round(x * 1000, 1) for x in v] for k, v in pair.items()},
            "512_ms": med["theirs"] * 1000, "512_ours_ms": med["ours"] * 1000, "512_cells": int(cp_masks.max()),
            "512_speedup_ours": med["theirs"] / med["ours"],
            "512_agreement_ap50": metrics.average_precision(cp_masks, ours, (0.5,))[0.5][0],
            "2048_ms": med["theirs_big"] * 1000, "2048_ours_ms": med["ours_big"] * 1000,
            "2048_cells": int(cp_big.max()), "2048_speedup_ours": med["theirs_big"] / med["ours_big"],
            "2048_agreement_ap50": metrics.average_precision(cp_big, big_masks, (0.5,))[0.5][0],
        }  # fmt: skip
    # -- peak memory on large images (one process each) -----------------------------------------
    runs = [("whole", args.memory_size), ("blocked", args.memory_size), ("pipeline", args.memory_size)]
    if args.large_size:
        runs.append(("blocked", args.large_size))
    results["memory"] = [memory_run(mode, size) for mode, size in runs]
    # -- Segment latency ---------------------------------------------------------------------------
    request_image = (np.clip(image / max(float(image.max()), 1e-9), 0, 1) * 65535).astype(np.uint16)
    local_times = []
    for _ in range(max(args.requests // 2, 3)):
        start = time.perf_counter()
        segment_sync(request_image[None].astype(np.float32), contract, forward)
        local_times.append(time.perf_counter() - start)
    served_times = []
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        shutil.copytree(REPO / "models" / MODEL, models / MODEL)
        server = ServerProcess(model_dir=models).start()
        try:
            with Client(server.address) as client:
                for _ in range(3):
                    client.segment(MODEL, request_image, timeout=120)
                for _ in range(args.requests):
                    start = time.perf_counter()
                    client.segment(MODEL, request_image, timeout=120)
                    served_times.append(time.perf_counter() - start)
        finally:
            server.terminate()
    local_p50 = float(np.percentile(local_times, 50))
    served_p50 = float(np.percentile(served_times, 50))
    results["segment_512"] = {
        "requests": len(served_times), "served_p50_ms": served_p50 * 1000,
        "served_p90_ms": float(np.percentile(served_times, 90)) * 1000, "local_p50_ms": local_p50 * 1000,
        "served_images_per_s": 1 / served_p50, "local_images_per_s": 1 / local_p50,
        "served_over_local": served_p50 / local_p50,
    }  # fmt: skip
    results["load_average_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "segmentation.json").write_text(json.dumps(results, indent=2))
    r5, r2, seg = results["reconstruction_512"], results["reconstruction_2048"], results["segment_512"]
    lines = [
        f"# Segmentation benchmark ({results['when']}, {results['cpus']} CPUs, load average "
        f"{results['load_average_start'][0]:.2f} at start, {results['load_average_end'][0]:.2f} at end)", "",
        "| measurement | value |", "|---|---|",
        f"| reconstruction 512x512, ours (median of 5) | {r5['ours_ms']:.1f} ms ({r5['ours_cells']} masks, "
        f"{r5['true_cells']} true cells) |",
        f"| reconstruction 512x512, per-pixel reference | {r5['reference_ms']:.0f} ms "
        f"({r5['reference_cells']} masks) |",
        f"| speed-up ours / reference | {r5['speedup']:.0f}x |",
        f"| agreement (AP@0.5 ours vs reference) | {r5['agreement_ap50_vs_reference']:.3f} |",
        f"| reconstruction 512x512, flow following as the ONNX graph on the CPU provider | "
        f"{r5['onnx_graph_cpu_ms']:.0f} ms (agreement with numpy {r5['onnx_graph_agreement_ap50']:.3f}) |",
        f"| reconstruction 2048x2048, ours | {r2['ours_ms']:.0f} ms ({r2['ours_cells']} masks) |",
        f"| Segment 512x512 via gRPC, p50 / p90 | {seg['served_p50_ms']:.0f} / {seg['served_p90_ms']:.0f} ms "
        f"({seg['served_images_per_s']:.2f} images/s) |",
        f"| same work locally (ORT + reconstruction), p50 | {seg['local_p50_ms']:.0f} ms "
        f"({seg['local_images_per_s']:.2f} images/s) |",
        f"| served / local | {seg['served_over_local']:.2f} |",
    ]  # fmt: skip
    for m in results["memory"]:
        lines.append(
            f"| peak RSS, {m['mode']} {m['size']}x{m['size']} | {m['peak_rss_mib']} MiB ({m['added_mib']} MiB over "
            f"the inputs' {m['inputs_rss_mib']} MiB), {m['seconds']:.0f} s, {m['cells']} cells of {m['true_cells']} |"
        )
    if "cellpose_compute_masks" in results:
        cp = results["cellpose_compute_masks"]
        lines += [
            f"| Cellpose 4.2.1.1 compute_masks 512x512, interleaved medians of 5 | {cp['512_ms']:.0f} ms vs ours "
            f"{cp['512_ours_ms']:.0f} ms ({cp['512_cells']} masks): ratio {cp['512_speedup_ours']:.2f}, "
            f"agreement AP@0.5 {cp['512_agreement_ap50']:.3f} |",
            f"| Cellpose 4.2.1.1 compute_masks 2048x2048, interleaved medians of 3 | {cp['2048_ms']:.0f} ms vs ours "
            f"{cp['2048_ours_ms']:.0f} ms ({cp['2048_cells']} masks): ratio {cp['2048_speedup_ours']:.2f}, "
            f"agreement AP@0.5 {cp['2048_agreement_ap50']:.3f} |",
        ]  # fmt: skip
    else:
        lines.append("| Cellpose compute_masks | not measured (no --cellpose-site given) |")
    (RESULTS / "segmentation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
