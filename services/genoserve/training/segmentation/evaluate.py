"""AP of a segmentation ONNX model on held-out synthetic images and on the real nuclei image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from genoserve.segmentation.contract import SegmentationContract
from genoserve.segmentation.metrics import mean_average_precision
from genoserve.segmentation.pipeline import segment_sync
from genoserve.training.segmentation.simulator import SimConfig, dataset

Array = np.ndarray[Any, Any]

#: The real image shipped as test data (stardist tests, BBBC038 image), relative to the repo root.
REAL_IMAGE = Path("tests/data/segmentation/stardist_tests_img2d_256.tif")
REAL_MASKS = Path("tests/data/segmentation/stardist_tests_mask2d_256.tif")
THRESHOLDS = (0.5, 0.75, 0.9)


def onnx_forward(onnx_bytes: bytes, input_name: str = "image") -> Any:
    """A [B, C, t, t] -> [B, 3, t, t] callable over an ONNX Runtime CPU session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

    def forward(batch: Array) -> Array:
        return np.asarray(session.run(None, {input_name: batch.astype(np.float32)})[0])

    return forward


def evaluate_synthetic(
    forward: Any, contract: SegmentationContract, seed: int, count: int = 12, config: SimConfig | None = None
) -> dict[str, float]:
    """AP on ``count`` simulated images (``config``, default: the simulator's defaults at 256x256)."""
    pairs = []
    for image, masks in dataset(seed, count, config or SimConfig(size=(256, 256))):
        result = segment_sync(image[None], contract, forward)
        pairs.append((masks, result.masks))
    ap = mean_average_precision(pairs, THRESHOLDS)
    return {f"synthetic_ap{int(t * 100)}": ap[t] for t in THRESHOLDS}


def evaluate_real(forward: Any, contract: SegmentationContract, root: Path = Path()) -> dict[str, float]:
    import tifffile

    image = np.asarray(tifffile.imread(root / REAL_IMAGE)).astype(np.float32)
    masks = np.asarray(tifffile.imread(root / REAL_MASKS)).astype(np.int32)
    result = segment_sync(image[None], contract, forward)
    ap = mean_average_precision([(masks, result.masks)], THRESHOLDS)
    return {f"real_ap{int(t * 100)}": ap[t] for t in THRESHOLDS}
