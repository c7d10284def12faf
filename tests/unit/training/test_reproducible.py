"""Training is reproducible from its seed: the same command gives the same ONNX bytes.

``make models`` promises that every committed model can be trained again from its seed; these
check the property on the quick (few-step) paths, in one process, as the training scripts set
their threads. (The variant caller's data come from its read simulator, whose seeding its own
tests cover; here its training loop and export.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import yaml

from genoserve.training.embedding.train import main as train_embedding
from genoserve.training.segmentation import train as segmentation
from genoserve.training.variants import train as variants


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.onnx"))}


def _metrics(root: Path) -> dict[str, dict[str, float]]:
    out = {}
    for path in sorted(root.rglob("model.yaml")):
        metrics = dict(yaml.safe_load(path.read_text())["versions"][-1]["metrics"])
        metrics.pop("train_seconds", None)
        out[path.parent.name] = metrics
    return out


def test_segmentation_and_embedding_training_give_the_same_bytes_from_the_same_seed(tmp_path: Path) -> None:
    runs = []
    for run in ("a", "b"):
        root = tmp_path / run
        segmentation.main(["--out", str(root), "--quick"])
        train_embedding(["--out", str(root), "--seed", "1", "--quick", "--threads", "1"])
        runs.append((_digests(root), _metrics(root)))
    (digests_a, metrics_a), (digests_b, metrics_b) = runs
    assert len(digests_a) == 3
    assert digests_a == digests_b
    assert metrics_a == metrics_b
    # ... and another seed trains another model (the seed is used, not ignored)
    other = tmp_path / "other"
    segmentation.main(["--out", str(other), "--quick", "--seed", "1"])
    [(name, digest)] = _digests(other).items()
    assert digests_a[name] != digest


def test_variant_caller_training_loop_and_export_are_reproducible() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as the training script sets it
    try:
        _check_variant_caller()
    finally:
        torch.set_num_threads(threads)


def _check_variant_caller() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(48, 100, 221, 7), dtype=np.uint8)
    labels = rng.integers(0, 3, size=48)
    settings = variants.Settings(epochs=1, batch_size=16, width=8)
    first = variants.export(variants.fit(images, labels, 7, settings, seed=5), 7)
    second = variants.export(variants.fit(images, labels, 7, settings, seed=5), 7)
    other = variants.export(variants.fit(images, labels, 7, settings, seed=6), 7)
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    assert first != other
