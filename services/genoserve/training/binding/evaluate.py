"""Scores an exported binding model on both strands as the server does, and its metrics (no torch).

Strand modes: ``forward`` (the given strand), ``max`` and ``mean`` of the forward and the
reverse-complement logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from genoserve.training.binding.onehot import reverse_complement
from genoserve.training.metrics import auprc, auroc

Array = np.ndarray[Any, Any]


def cpu_session(model: bytes | Path, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime CPU session (``threads`` 0 lets ONNX Runtime choose)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def strand_logits(session: ort.InferenceSession, x: Array, strand: str = "max", batch_size: int = 512) -> Array:
    """x: float32 ``[n, length, 4]`` -> float32 ``[n, tasks]`` logits combined over strands."""
    if strand not in ("forward", "max", "mean"):
        raise ValueError(f"strand must be forward, max or mean, got {strand!r}")
    parts = []
    for lo in range(0, x.shape[0], batch_size):
        chunk = np.ascontiguousarray(x[lo : lo + batch_size], dtype=np.float32)
        forward = session.run(["logit"], {"x": chunk})[0]
        if strand == "forward":
            parts.append(forward)
            continue
        reverse = session.run(["logit"], {"x": reverse_complement(chunk)})[0]
        parts.append(np.maximum(forward, reverse) if strand == "max" else (forward + reverse) / 2)
    return np.concatenate(parts).astype(np.float32)


def task_metrics(labels: Array, scores: Array, tasks: Sequence[str], prefix: str = "") -> dict[str, float]:
    """labels, scores: ``[n, tasks]``. One task: ``auroc``, ``auprc``; several: the macro means
    plus ``auroc_<task>`` and ``auprc_<task>``. Keys start with ``prefix``."""
    per_task = {
        task: (auroc(labels[:, j], scores[:, j]), auprc(labels[:, j], scores[:, j])) for j, task in enumerate(tasks)
    }
    metrics = {
        f"{prefix}auroc": float(np.mean([v[0] for v in per_task.values()])),
        f"{prefix}auprc": float(np.mean([v[1] for v in per_task.values()])),
    }
    if len(tasks) > 1:
        for task, (roc, prc) in per_task.items():
            metrics[f"{prefix}auroc_{task}"] = roc
            metrics[f"{prefix}auprc_{task}"] = prc
    return metrics
