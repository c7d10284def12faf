"""Peak memory of segmentation on large images, one measurement per process (for the benchmark).

    .venv/bin/python -m tests.bench.segmentation_memory --mode blocked --size 10240

Modes:

* ``blocked`` / ``whole``: mask reconstruction alone (``blocks.compute_masks_blocked`` with the
  default 2048-pixel blocks, or ``dynamics.compute_masks`` on the whole field) on exact flows of
  a large synthetic image: a simulated 1024x1024 image's masks tiled ``size / 1024`` times each
  way (each copy its own labels), their heat-diffusion flows, and cell-probability logits of +-4.
  The true number of cells is known, so the count is checked too.
* ``pipeline``: the whole path (normalise, tiles through the committed model on ONNX Runtime,
  stitching, blocked reconstruction, per-cell stats) on the tiled simulated image.

Prints one JSON line: the RSS once the inputs were built, the peak RSS of the measured step
(VmHWM, reset after building the inputs) and their difference (what the step added), wall
seconds, cells found and true.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from genoserve.segmentation.flows import masks_to_flows
from genoserve.training.segmentation.simulator import SimConfig, simulate

Array = np.ndarray[Any, Any]
PIECE = 1024


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5), so that the
    peak measured afterwards belongs to the measured step, not to building its inputs."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def tiled(size: int, seed: int) -> tuple[Array, Array, Array]:
    """image float32 [S, S], masks int32 [S, S] and flows float32 [2, S, S] (S = size)."""
    # The images the README figures were measured on (no tiny nuclei, round cell bodies).
    config = SimConfig(
        size=(PIECE, PIECE), diameter=(8.0, 16.0), coverage=(0.12, 0.15), tiny_fraction=0.0, cytoplasm_elongation=1.0
    )
    image, masks = simulate(np.random.default_rng(seed), config)
    flows = masks_to_flows(masks)
    reps = -(-size // PIECE)
    n = int(masks.max())
    big_masks = np.zeros((size, size), dtype=np.int32)
    big_flows = np.zeros((2, size, size), dtype=np.float32)
    big_image = np.zeros((size, size), dtype=np.float32)
    for i in range(reps):
        for j in range(reps):
            ys, xs = slice(i * PIECE, min((i + 1) * PIECE, size)), slice(j * PIECE, min((j + 1) * PIECE, size))
            hy, hx = ys.stop - ys.start, xs.stop - xs.start
            piece = masks[:hy, :hx]
            big_masks[ys, xs] = np.where(piece > 0, piece + (i * reps + j) * n, 0)
            big_flows[:, ys, xs] = flows[:, :hy, :hx]
            big_image[ys, xs] = image[:hy, :hx]
    return big_image, big_masks, big_flows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["blocked", "whole", "pipeline"], required=True)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    image, masks, flows = tiled(args.size, args.seed)
    true_cells = int(np.unique(masks).size - 1)
    if args.mode == "pipeline":
        del masks, flows
        import onnxruntime as ort

        from genoserve.runtime.registry import read_spec
        from genoserve.segmentation.contract import SegmentationContract
        from genoserve.segmentation.pipeline import segment_sync
        from tests.support.server import REPO

        model = REPO / "models" / "cellpose-nuclei"
        contract = SegmentationContract.of(read_spec(model))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(model / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])

        def forward(batch: Array) -> Array:
            return np.asarray(session.run(None, {contract.input: batch})[0])

        base = _status_mib("VmRSS")
        reset_peak()
        start = time.perf_counter()
        result = segment_sync(image[None], contract, forward)
        found = result.n_cells
    else:
        from genoserve.segmentation.blocks import compute_masks_blocked, halo_for
        from genoserve.segmentation.dynamics import compute_masks

        del image
        cellprob = np.where(masks > 0, 4.0, -4.0).astype(np.float32)
        del masks
        base = _status_mib("VmRSS")
        reset_peak()
        start = time.perf_counter()
        if args.mode == "blocked":
            out = compute_masks_blocked(flows, cellprob, halo=halo_for(16.0))
        else:
            out = compute_masks(flows, cellprob)
        found = int(out.max())
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    print(json.dumps({
        "mode": args.mode, "size": args.size, "seconds": round(seconds, 1), "cells": found, "true_cells": true_cells,
        "inputs_rss_mib": round(base), "peak_rss_mib": round(peak), "added_mib": round(peak - base),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
