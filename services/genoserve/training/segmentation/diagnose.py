"""Where a segmentation model loses AP: error classes, upper bounds and inference settings.

    python -m genoserve.training.segmentation.diagnose [--model models/cellpose-nuclei] [--sweep]

On the held-out simulated images (``evaluate_synthetic``'s: seed 1000000, 256x256) and the real
image, every true mask not matched at IoU >= 0.5 (Cellpose's Hungarian matching) is put in one
class, and every unmatched prediction too:

- ``merged``: its best-overlapping prediction also covers most (>= 50 %) of another true mask;
- ``split``: two or more predictions each cover >= 20 % of it;
- ``boundary``: one prediction overlaps it with 0.25 <= IoU < 0.5 (outline quality);
- ``missed``: no prediction covers >= 25 % of it (then described by size, brightness, touching);
- ``other``: none of these.

Predictions: ``fp_empty`` (over half of it background), ``fp_part`` (the rest: the other halves of
merges and splits). Also: how many true masks the flow-error check and ``min_size`` cost (the
reconstruction repeated without them), AP with the true flows and cell probability (the
reconstruction's ceiling), and, with ``--sweep``, AP under other inference settings.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from genoserve.segmentation import tiling
from genoserve.segmentation.contract import SegmentationContract
from genoserve.segmentation.dynamics import MaskParams, compute_masks
from genoserve.segmentation.flows import masks_to_flows
from genoserve.segmentation.metrics import iou_matrix, matched_pairs, mean_average_precision, true_positives
from genoserve.segmentation.normalize import percentile_normalize
from genoserve.training.segmentation.evaluate import REAL_IMAGE, REAL_MASKS, onnx_forward
from genoserve.training.segmentation.simulator import SimConfig, dataset, touching_pixels

Array = np.ndarray[Any, Any]
Forward = Callable[[Array], Array]

#: True masks at most this many pixels count as "tiny" (the simulator's tiny nuclei are 4.5-6.5 px
#: across; the real image's tiny masks are 21 px).
TINY_AREA = 35


@dataclass(frozen=True)
class Case:
    name: str
    image: Array  # float32 [H, W] raw
    masks: Array  # int32 [H, W]


def cases(root: Path = Path(), seed: int = 1_000_000, count: int = 12) -> list[Case]:
    import tifffile

    out = [Case(f"sim{i}", im, m) for i, (im, m) in enumerate(dataset(seed, count, SimConfig(size=(256, 256))))]
    real = np.asarray(tifffile.imread(root / REAL_IMAGE)).astype(np.float32)
    out.append(Case("real", real, np.asarray(tifffile.imread(root / REAL_MASKS)).astype(np.int32)))
    return out


def network_output(forward: Forward, image: Array, tile: int, overlap: float, flips: bool = False) -> Array:
    """Stitched float32 [3, H, W] for a raw image [H, W]; ``flips`` averages the outputs of the
    four flips (Cellpose's ``augment``), the flows flipped back with their signs."""
    x = percentile_normalize(image[None].astype(np.float32))
    if not flips:
        return tiling.run_tiled(x, tile, overlap, 8, forward)
    total = np.zeros((3, *image.shape), dtype=np.float32)
    for fy in (False, True):
        for fx in (False, True):
            axes = tuple(a for a, f in ((1, fy), (2, fx)) if f)
            out = tiling.run_tiled(np.ascontiguousarray(np.flip(x, axes)), tile, overlap, 8, forward)
            out = np.flip(out, axes).copy()
            if fy:
                out[0] *= -1
            if fx:
                out[1] *= -1
            total += out
    return total / 4


def true_output(masks: Array, logit: float = 5.0) -> Array:
    """Perfect network output for ``masks``: true unit flows and a +-``logit`` cell probability."""
    return np.concatenate([masks_to_flows(masks), np.where(masks > 0, logit, -logit)[None].astype(np.float32)])


def _touching(masks: Array) -> Array:
    """bool per label 0..max: the mask touches another mask (8-neighbourhood)."""
    return np.bincount(masks[touching_pixels(masks)], minlength=int(masks.max()) + 1) > 0


def classify(true: Array, pred: Array, image: Array) -> tuple[Counter[str], list[dict[str, Any]]]:
    """Error classes of one image (see the module docstring) and a record per unmatched true mask."""
    iou = iou_matrix(true, pred)
    t_labels = np.unique(true[true > 0])
    p_labels = np.unique(pred[pred > 0])
    counts: Counter[str] = Counter()
    records: list[dict[str, Any]] = []
    n_t, n_p = iou.shape
    matched_t = np.zeros(n_t, bool)
    matched_p = np.zeros(n_p, bool)
    rows, cols = matched_pairs(iou, 0.5)
    matched_t[rows] = True
    matched_p[cols] = True
    counts["true"] = n_t
    counts["tp"] = int(matched_t.sum())
    # overlap[i, j]: pixels of true i covered by prediction j
    t_idx = np.searchsorted(t_labels, true)
    p_idx = np.searchsorted(p_labels, pred)
    both = (true > 0) & (pred > 0)
    overlap = np.zeros((n_t, n_p))
    np.add.at(overlap, (t_idx[both], p_idx[both]), 1)
    area_t = np.bincount(t_idx[true > 0], minlength=n_t).astype(float)
    area_p = np.bincount(p_idx[pred > 0], minlength=n_p).astype(float)
    cover = overlap / np.maximum(area_t[:, None], 1)  # fraction of true i inside prediction j
    touching = _touching(true)
    background = float(np.median(image[true == 0])) if (true == 0).any() else 0.0
    cell_level = np.bincount(t_idx[true > 0], weights=image[true > 0], minlength=n_t) / np.maximum(area_t, 1)
    contrast = cell_level - background
    typical = float(np.median(contrast)) if n_t else 1.0
    h, w = true.shape
    for i in np.nonzero(~matched_t)[0]:
        j = int(np.argmax(cover[i])) if n_p else -1
        others = np.nonzero(cover[:, j] >= 0.5)[0] if j >= 0 else np.zeros(0, int)
        if j >= 0 and cover[i, j] >= 0.25 and (others != i).any():
            kind = "merged"
        elif n_p and (cover[i] >= 0.2).sum() >= 2:
            kind = "split"
        elif j >= 0 and 0.25 <= iou[i, j] < 0.5:
            kind = "boundary"
        elif not n_p or cover[i].max() < 0.25:
            kind = "missed"
        else:
            kind = "other"
        counts[kind] += 1
        ys, xs = np.nonzero(true == t_labels[i])
        border = bool(ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1)
        records.append({
            "kind": kind, "area": int(area_t[i]), "tiny": bool(area_t[i] <= TINY_AREA),
            "relative_brightness": round(float(contrast[i] / max(typical, 1e-9)), 3),
            "touching": bool(touching[t_labels[i]]), "border": border,
            "best_iou": round(float(iou[i].max()) if n_p else 0.0, 3),
        })  # fmt: skip
    for k in np.nonzero(~matched_p)[0]:
        counts["fp_empty" if overlap[:, k].sum() < 0.5 * area_p[k] else "fp_part"] += 1
    return counts, records


def contrast_to_noise(true: Array, image: Array) -> tuple[Array, Array, Array]:
    """Per true mask (labels, area, contrast-to-noise): (mean inside - mean of the background
    ring 2-3 px outside) / the background's pixel noise (1.4826 x MAD of the image minus its
    Gaussian blur, sigma 2)."""
    image = image.astype(np.float64)
    detail = image - ndimage.gaussian_filter(image, 2.0)
    bg = detail[true == 0]
    noise = 1.4826 * float(np.median(np.abs(bg - np.median(bg)))) if bg.size else 1.0
    labels, areas, ratios = [], [], []
    h, w = true.shape
    for label, box in enumerate(ndimage.find_objects(true), start=1):
        if box is None:
            continue
        ys = slice(max(box[0].start - 4, 0), min(box[0].stop + 4, h))
        xs = slice(max(box[1].start - 4, 0), min(box[1].stop + 4, w))
        cell = true[ys, xs] == label
        ring = ndimage.binary_dilation(cell, iterations=3) & ~ndimage.binary_dilation(cell) & (true[ys, xs] == 0)
        if not ring.any():
            ring = ndimage.binary_dilation(cell, iterations=3) & ~cell
        inside, around = image[ys, xs][cell].mean(), image[ys, xs][ring].mean()
        labels.append(label)
        areas.append(int(cell.sum()))
        ratios.append((inside - around) / max(noise, 1e-9))
    return np.array(labels), np.array(areas), np.array(ratios)


def matched_labels(true: Array, pred: Array) -> set[int]:
    """True labels matched at IoU >= 0.5 under Cellpose's Hungarian matching."""
    rows, _ = matched_pairs(iou_matrix(true, pred), 0.5)
    return {int(v) for v in np.unique(true[true > 0])[rows]}


def found_by_contrast(members: Sequence[Case], preds: Sequence[Array]) -> dict[tuple[str, str], tuple[int, float]]:
    """(area bin, contrast-to-noise bin) -> (true masks, fraction found at IoU >= 0.5)."""
    rows: list[tuple[int, float, bool]] = []
    for c, p in zip(members, preds, strict=True):
        found = matched_labels(c.masks, p)
        for label, area, ratio in zip(*contrast_to_noise(c.masks, c.image), strict=True):
            rows.append((int(area), float(ratio), int(label) in found))
    out: dict[tuple[str, str], tuple[int, float]] = {}
    for a_lo, a_hi in ((0, 35), (35, 80), (80, 10**9)):
        for r_lo, r_hi in ((-np.inf, 2.0), (2.0, 5.0), (5.0, np.inf)):
            hits = [f for a, r, f in rows if a_lo <= a < a_hi and r_lo <= r < r_hi]
            if hits:
                key = (f"area {a_lo}-{a_hi if a_hi < 10**9 else ''}", f"CNR {r_lo:g}-{r_hi:g}")
                out[key] = (len(hits), float(np.mean(hits)))
    return out


def ap50_ignoring_faint(members: Sequence[Case], preds: Sequence[Array], min_cnr: float = 2.0) -> tuple[float, int]:
    """AP@0.5 with true masks below ``min_cnr`` contrast-to-noise ignored, as COCO ignores its
    "crowd" regions: such a mask is no false negative when missed, and a prediction matched to it
    is neither a true nor a false positive. A diagnostic only (the model.yaml metric counts every
    mask). Returns (AP, masks ignored)."""
    tp = fp = fn = ignored = 0
    for c, p in zip(members, preds, strict=True):
        labels, _, ratios = contrast_to_noise(c.masks, c.image)
        faint = {int(v) for v in labels[ratios < min_cnr]}
        true_ids = np.unique(c.masks[c.masks > 0])  # iou_matrix's rows, in this order
        iou = iou_matrix(c.masks, p)
        rows, cols = matched_pairs(iou, 0.5)
        matched = {int(true_ids[r]) for r in rows}
        tp += sum(int(true_ids[r]) not in faint for r in rows)
        fn += sum(int(t) not in faint and int(t) not in matched for t in true_ids)
        fp += iou.shape[1] - len(cols)
        ignored += len(faint)
    return (tp / (tp + fp + fn) if tp + fp + fn else 1.0), ignored


def describe_missed(records: Sequence[dict[str, Any]]) -> Counter[str]:
    """Missed true masks by a few attributes (a mask can count under several)."""
    out: Counter[str] = Counter()
    for r in records:
        if r["kind"] != "missed":
            continue
        out["missed"] += 1
        out[f"tiny (<= {TINY_AREA} px)"] += r["tiny"]
        out["faint (< 0.3 of typical contrast)"] += r["relative_brightness"] < 0.3
        out["tiny and faint"] += r["tiny"] and r["relative_brightness"] < 0.3
        out["touching another mask"] += r["touching"]
        out["at the image border"] += r["border"]
        out["under 15 px"] += r["area"] < 15
    return out


def ap(pairs: Sequence[tuple[Array, Array]]) -> dict[float, float]:
    return mean_average_precision(pairs, (0.5, 0.75, 0.9))


def ap50(members: Sequence[Case], preds: Sequence[Array]) -> float:
    return ap([(c.masks, p) for c, p in zip(members, preds, strict=True)])[0.5]


def reconstruct(outputs: Sequence[Array], params: MaskParams) -> list[Array]:
    return [compute_masks(np.ascontiguousarray(o[:2]), np.ascontiguousarray(o[2]), params) for o in outputs]


def tp_count(true: Array, pred: Array) -> int:
    return true_positives(iou_matrix(true, pred), 0.5)


def report(forward: Forward, contract: SegmentationContract, root: Path, sweep: bool) -> None:
    all_cases = cases(root)
    groups = {"synthetic": [c for c in all_cases if c.name != "real"],
              "real": [c for c in all_cases if c.name == "real"]}  # fmt: skip
    outputs = {c.name: network_output(forward, c.image, contract.tile, contract.overlap) for c in all_cases}
    base = MaskParams()
    for group, members in groups.items():
        preds = reconstruct([outputs[c.name] for c in members], base)
        total: Counter[str] = Counter()
        records: list[dict[str, Any]] = []
        for c, p in zip(members, preds, strict=True):
            counts, recs = classify(c.masks, p, c.image)
            total += counts
            records += recs
        score = ap([(c.masks, p) for c, p in zip(members, preds, strict=True)])
        print(f"== {group}: AP@0.5 {score[0.5]:.3f} AP@0.75 {score[0.75]:.3f} AP@0.9 {score[0.9]:.3f}")
        print("  counts:", dict(sorted(total.items())))
        print("  missed:", dict(describe_missed(records)))
        bright = [r["relative_brightness"] for r in records if r["kind"] == "missed"]
        if bright:
            print("  missed relative brightness quartiles:", np.round(np.percentile(bright, [25, 50, 75]), 2).tolist())
        areas = Counter(r["kind"] + ("/tiny" if r["tiny"] else "") for r in records)
        print("  unmatched by kind/size:", dict(sorted(areas.items())))
        for (area_bin, ratio_bin), (n, frac) in found_by_contrast(members, preds).items():
            print(f"  {area_bin:12s} {ratio_bin:12s} {n:5d} true, {frac:.2f} found")
        for label, params in (("no flow-error check", replace(base, flow_threshold=0.0)),
                              ("min_size 0", replace(base, min_size=0)),
                              ("neither", replace(base, flow_threshold=0.0, min_size=0))):  # fmt: skip
            alt = reconstruct([outputs[c.name] for c in members], params)
            triples = zip(members, alt, preds, strict=True)
            gained = sum(tp_count(c.masks, a) - tp_count(c.masks, p) for c, a, p in triples)
            print(f"  {label}: TP change {gained:+d}, AP@0.5 {ap50(members, alt):.3f}")
        faint_ap, ignored = ap50_ignoring_faint(members, preds)
        print(f"  AP@0.5 with the {ignored} true masks below contrast-to-noise 2 ignored (diagnostic): {faint_ap:.3f}")
        perfect = reconstruct([true_output(c.masks) for c in members], base)
        print(f"  true flows + cellprob: AP@0.5 {ap50(members, perfect):.3f}")
    if not sweep:
        return
    print("== inference settings (AP@0.5 synthetic / real)")
    variants: list[tuple[str, dict[str, Array], MaskParams]] = [("default", outputs, base)]
    for th in (-1.0, -0.5, 0.5, 1.0):
        variants.append((f"cellprob_threshold {th}", outputs, replace(base, cellprob_threshold=th)))
    for ft in (0.0, 0.6, 0.8):
        variants.append((f"flow_threshold {ft}", outputs, replace(base, flow_threshold=ft)))
    variants.append(("niter 400", outputs, replace(base, niter=400)))
    variants.append(("min_size 8", outputs, replace(base, min_size=8)))
    half = {c.name: network_output(forward, c.image, contract.tile, 0.5) for c in all_cases}
    variants.append(("tile overlap 0.5", half, base))
    flipped = {c.name: network_output(forward, c.image, contract.tile, contract.overlap, flips=True) for c in all_cases}
    variants.append(("flip averaging (augment)", flipped, base))
    for label, outs, params in variants:
        scores = [ap50(members, reconstruct([outs[c.name] for c in members], params)) for members in groups.values()]
        print(f"  {label:32s} {scores[0]:.3f} / {scores[1]:.3f}")


def main(argv: list[str] | None = None) -> None:
    from genoserve.runtime.registry import read_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/cellpose-nuclei"))
    parser.add_argument("--onnx", type=Path, help="an ONNX file to use instead of the model's latest version")
    parser.add_argument("--sweep", action="store_true", help="also AP under other inference settings")
    args = parser.parse_args(argv)
    spec = read_spec(args.model)
    onnx = args.onnx or args.model / str(max(v.version for v in spec.versions)) / "model.onnx"
    report(onnx_forward(onnx.read_bytes()), SegmentationContract.of(spec), Path(), args.sweep)


if __name__ == "__main__":
    main()
