"""Train the Cellpose-style nuclei model on simulated images and write models/cellpose-nuclei.

    python -m genoserve.training.segmentation.train --out models --seed 0
    python -m genoserve.training.segmentation.train --out models --evaluate-only   # re-record metrics

Targets as in Cellpose: unit flows from the masks by heat diffusion (x FLOW_SCALE) and the
foreground; loss = MSE(flows) / 2 + BCE(cell probability), Cellpose's loss, as a weighted mean
over pixels: small cells and a ring around them weigh more (``loss_weights``). Reproducible from
the seed on the CPU (fixed steps, one thread: 3,000 steps took 27 min on 2 cores shared at load
average 2.6-5.3, about 0.4 s a step with a core to itself). ``--quick`` trains
a few steps only (for tests of the export path). ``--evaluate-only`` trains nothing: it evaluates
the model.onnx already in ``--out`` (version ``--version``) as a training run does and records the
metrics again (keeping the run's ``train_seconds`` and provenance), for when the family's
pipeline changes. ``--widths``, ``--residual``, ``--small-area``,
``--small-max``, ``--touch-weight`` and ``--pool`` vary the recipe (network, per-pixel loss weights
(``loss_weights``) and the number of simulated training images); their defaults make the committed model.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scipy import ndimage

from genoserve.segmentation.contract import SegmentationContract
from genoserve.segmentation.flows import masks_to_flows
from genoserve.training.modelyaml import write_model_dir
from genoserve.training.segmentation.evaluate import evaluate_real, evaluate_synthetic, onnx_forward
from genoserve.training.segmentation.simulator import SimConfig, dataset, touching_pixels
from genoserve.training.segmentation.unet import FLOW_SCALE, RESIDUAL, WIDTHS, Exported, UNet

Array = np.ndarray[Any, Any]

NAME = "cellpose-nuclei"
TILE = 256
#: No zeros around images before tiling (the contract's ``pad``; cellpose's 8 is the default): the
#: network was trained on crops inside simulated images and evaluated without them; with 8, a
#: 256 x 256 image runs as 4 tiles, and the synthetic AP@0.5 drops by 0.07 (the real image's gains 0.03).
PAD = 0
#: Side of the simulated training images (random crops of ``CROP`` are taken from them).
POOL_SIZE = 128
CROP = 96
STEPS = 9000
POOL = 1000
#: Nominal cell diameter of the training data (pixels): images are rescaled to it when a
#: request gives a diameter.
DIAMETER = 12.0
#: Weight of the flow term: Cellpose's loss is MSE(flows) / 2 + BCE(cell probability).
FLOW_LOSS_WEIGHT = 0.5
#: Per-pixel loss weights (``loss_weights``): pixels of and around a cell of area A weigh
#: clip(sqrt(SMALL_AREA / A), 1, SMALL_MAX); pixels next to a touching neighbour get
#: + TOUCH_WEIGHT. 0 / 1 / 0 turns them off (a plain mean, Cellpose's loss).
SMALL_AREA = 113.0
SMALL_MAX = 3.0
TOUCH_WEIGHT = 0.0


def normalise(image: Array) -> Array:
    lo, hi = np.percentile(image, [1, 99])
    return np.asarray((image - lo) / max(hi - lo, 1e-12), dtype=np.float32)


def make_pool(seed: int, count: int) -> tuple[Array, Array]:
    """Images float32 [N, 1, S, S] (normalised) and their masks int32 [N, S, S]."""
    data = dataset(seed, count, SimConfig(size=(POOL_SIZE, POOL_SIZE)))
    images = np.stack([normalise(im)[None] for im, _ in data])
    masks = np.stack([m for _, m in data])
    return images, masks


def loss_weights(
    masks: Array, small_area: float = SMALL_AREA, small_max: float = SMALL_MAX, touch: float = TOUCH_WEIGHT
) -> Array:
    """Per-pixel loss weight float32 [H, W] for masks int32 [H, W] (1 everywhere when off).

    Small cells: the cell and a 2-pixel ring around it weigh clip(sqrt(small_area / area), 1,
    small_max), so that a 20-pixel nucleus is not outweighed by its large neighbours' pixels.
    Touching cells: pixels of a mask with another mask in their 3x3 neighbourhood get + touch
    (where merges happen: the flows must part there).
    """
    weight = np.ones(masks.shape, dtype=np.float32)
    if masks.max() == 0:
        return weight
    if small_area > 0:
        grown = ndimage.grey_dilation(masks, size=5)
        grown = np.where(masks > 0, masks, grown)
        area = np.bincount(masks.ravel()).astype(np.float64)
        factor = np.clip(np.sqrt(small_area / np.maximum(area, 1.0)), 1.0, small_max)
        factor[0] = 1.0
        weight = factor[grown].astype(np.float32)
    if touch > 0:
        weight += touch * touching_pixels(masks).astype(np.float32)
    return weight


@dataclass(frozen=True)
class Recipe:
    """What the command line may vary (the defaults make the committed model)."""

    widths: tuple[int, ...] = WIDTHS
    residual: bool = RESIDUAL
    small_area: float = SMALL_AREA
    touch_weight: float = TOUCH_WEIGHT
    small_max: float = SMALL_MAX

    def describe(self) -> str:
        block = "residual" if self.residual else "plain"
        weights = f"small-cell area {self.small_area:g} (cap {self.small_max:g}), touching weight {self.touch_weight:g}"
        return f"widths {'-'.join(map(str, self.widths))} ({block} blocks); loss weights: {weights}"


def augment_batch(
    rng: np.random.Generator, pool: tuple[Array, Array], size: int, crop: int, recipe: Recipe = Recipe()
) -> list[Array]:
    """Random crops with flips and transposes -> images [B, 1, c, c], flows [B, 2, c, c],
    foreground [B, 1, c, c], loss weights [B, 1, c, c].

    The flow targets are computed from the cropped (and flipped) masks, so a cell cut by the crop
    edge flows to the centre of its visible part: what the flow-error check recomputes at
    inference for a cell cut by the image border (targets from the uncropped image taught the
    network to point such cells outwards, and the check then dropped them).
    """
    images, masks = pool
    out_x, out_f, out_p, out_w = [], [], [], []
    for _ in range(size):
        i = int(rng.integers(len(images)))
        y0, x0 = (int(v) for v in rng.integers(0, images.shape[-1] - crop + 1, size=2))
        x = images[i, :, y0 : y0 + crop, x0 : x0 + crop]
        m = masks[i, y0 : y0 + crop, x0 : x0 + crop]
        if rng.random() < 0.5:
            x, m = x[:, ::-1], m[::-1]
        if rng.random() < 0.5:
            x, m = x[:, :, ::-1], m[:, ::-1]
        if rng.random() < 0.5:
            x, m = x.transpose(0, 2, 1), m.T
        scale = rng.uniform(0.8, 1.25)  # intensity jitter after normalisation
        m = np.ascontiguousarray(m)
        out_x.append(np.ascontiguousarray(x) * scale)
        out_f.append(masks_to_flows(m))
        out_p.append((m > 0).astype(np.float32)[None])
        out_w.append(loss_weights(m, recipe.small_area, recipe.small_max, recipe.touch_weight)[None])
    return [np.stack(out_x).astype(np.float32), np.stack(out_f), np.stack(out_p), np.stack(out_w)]


def train(
    seed: int, steps: int, pool_size: int, batch: int, crop: int, log: bool = True, recipe: Recipe = Recipe()
) -> UNet:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    pool = make_pool(seed, pool_size)
    net = UNet(1, recipe.widths, recipe.residual)
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=max(steps, 1), pct_start=0.1)
    bce = torch.nn.BCEWithLogitsLoss()
    bce_pixels = torch.nn.BCEWithLogitsLoss(reduction="none")
    weighted = recipe.small_area > 0 or recipe.touch_weight > 0
    start = time.monotonic()
    net.train()
    for step in range(steps):
        x, f, p, w = (torch.from_numpy(a) for a in augment_batch(rng, pool, batch, crop, recipe))
        y = net(x)
        if weighted:  # weighted means; the flow MSE averages over its two channels
            flow_sq = ((y[:, :2] - f * FLOW_SCALE) ** 2).mean(dim=1, keepdim=True)
            loss = (w * (FLOW_LOSS_WEIGHT * flow_sq + bce_pixels(y[:, 2:], p))).sum() / w.sum()
        else:  # Cellpose's loss, exactly as before the weights existed
            loss = FLOW_LOSS_WEIGHT * torch.nn.functional.mse_loss(y[:, :2], f * FLOW_SCALE) + bce(y[:, 2:], p)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if log and (step % 50 == 0 or step == steps - 1):
            print(f"step {step:5d} loss {loss.item():.4f} ({time.monotonic() - start:.0f} s)", flush=True)
    net.eval()
    return net


def export(net: UNet) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        Exported(net).eval(), (torch.zeros(1, 1, 64, 64),), buffer,  # type: ignore[arg-type]
        input_names=["image"],
        output_names=["flows_cellprob"], opset_version=17, dynamo=False,
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                      "flows_cellprob": {0: "batch", 2: "height", 3: "width"}},
    )  # fmt: skip
    return buffer.getvalue()


def spec(recipe: Recipe = Recipe()) -> dict[str, Any]:
    return {
        "name": NAME,
        "family": "segmentation",
        "description": (
            "Cellpose-style nuclei model: compact U-Net (widths "
            + "-".join(map(str, recipe.widths))
            + ") trained on simulated fluorescence nuclei; outputs unit flows (dY, dX) and the cell-probability logit."
        ),
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 1, -1, -1], "warmup_shape": [-1, 1, TILE, TILE],
                    "description": "1st/99th-percentile normalised image; H and W multiples of 8"}],
        "outputs": [{"name": "flows_cellprob", "dtype": "float32", "shape": [-1, 3, -1, -1],
                     "labels": ["dy", "dx", "cellprob_logit"], "description": "flows and cell-probability logit"}],
        "preprocessing": {"tile": TILE, "tile_overlap": 0.1, "diameter": DIAMETER, "normalize_percentiles": [1, 99],
                          "pad": PAD},
        "batching": {"max_batch_size": 8, "max_queue_delay_us": 2000, "max_queue_size": 256},
    }  # fmt: skip


def contract() -> SegmentationContract:
    return SegmentationContract("image", "flows_cellprob", 1, TILE, 0.1, DIAMETER, pad=PAD)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--quick", action="store_true", help="a few steps on a small pool (export path only)")
    parser.add_argument("--widths", default="-".join(map(str, WIDTHS)), help="U-Net widths per level, e.g. 16-32-64-96")
    parser.add_argument(
        "--residual", type=int, choices=(0, 1), default=int(RESIDUAL), help="residual blocks (1) or plain"
    )
    parser.add_argument("--small-area", type=float, default=SMALL_AREA, help="loss_weights' small_area (0: off)")
    parser.add_argument("--small-max", type=float, default=SMALL_MAX, help="loss_weights' small_max")
    parser.add_argument("--touch-weight", type=float, default=TOUCH_WEIGHT, help="loss_weights' touch (0: off)")
    parser.add_argument("--pool", type=int, default=POOL, help="simulated training images (crops are drawn from them)")
    parser.add_argument(
        "--evaluate-only", action="store_true", help="train nothing: evaluate --out's model.onnx, record its metrics"
    )
    args = parser.parse_args(argv)
    if args.evaluate_only:
        evaluate_only(args.out, args.version, args.seed)
        return
    if args.pool < 1:
        parser.error(f"--pool must be at least 1 (simulated training images), got {args.pool}")
    recipe = Recipe(
        tuple(int(w) for w in args.widths.split("-")),
        bool(args.residual),
        args.small_area,
        args.touch_weight,
        args.small_max,
    )
    steps, pool_size, batch = (5, 16, 4) if args.quick else (args.steps, args.pool, 8)
    started = time.monotonic()
    net = train(args.seed, steps, pool_size, batch, crop=CROP, log=not args.quick, recipe=recipe)
    seconds = time.monotonic() - started
    onnx_bytes = export(net)
    metrics = metrics_of(onnx_bytes, args.seed, args.quick)
    metrics["train_seconds"] = round(seconds, 1)
    provenance = {
        "script": "genoserve.training.segmentation.train", "seed": str(args.seed), "steps": str(steps),
        "data": f"simulated (genoserve.training.segmentation.simulator), {POOL_SIZE}x{POOL_SIZE}, "
                f"pool {pool_size}, crops {CROP}, batch {batch}",
        "recipe": recipe.describe(),
        "real_eval": "stardist tests img2d_256 (BBBC038 nuclei, 65 masks), no rescale",
        "synthetic_eval": f"12 simulated 256x256 images, seed {args.seed + 1_000_000}",
    }  # fmt: skip
    directory = write_model_dir(args.out, spec(recipe), args.version, onnx_bytes, metrics, provenance)
    print(f"wrote {directory}: {metrics}")


def metrics_of(onnx_bytes: bytes, seed: int, quick: bool = False) -> dict[str, float]:
    """The recorded metrics of a trained network: held-out simulated images (seed + 1,000,000)
    and the real image, through the family's pipeline (``evaluate``)."""
    forward = onnx_forward(onnx_bytes)
    return {**evaluate_synthetic(forward, contract(), seed=seed + 1_000_000, count=4 if quick else 12),
            **evaluate_real(forward, contract())}  # fmt: skip


def evaluate_only(out: Path, version: int, seed: int) -> None:
    """Evaluate ``out``/NAME/``version``/model.onnx again and rewrite its metrics in model.yaml."""
    directory = out / NAME
    document = yaml.safe_load((directory / "model.yaml").read_text())
    [entry] = [v for v in document["versions"] if v["version"] == version]
    if str(entry["provenance"].get("seed")) != str(seed):
        raise SystemExit(f"{directory} version {version} was trained with seed {entry['provenance'].get('seed')}: "
                         f"pass --seed {entry['provenance'].get('seed')}")  # fmt: skip
    onnx_bytes = (directory / str(version) / "model.onnx").read_bytes()
    metrics = metrics_of(onnx_bytes, seed)
    metrics["train_seconds"] = entry["metrics"]["train_seconds"]
    recipe = document.get("description", "")
    written = write_model_dir(out, {**spec(), "description": recipe}, version, onnx_bytes, metrics, entry["provenance"])
    print(f"re-evaluated {written} version {version}: {metrics}")


if __name__ == "__main__":
    main()
