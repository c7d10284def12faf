"""`genoserve models import cellpose`: a Cellpose checkpoint -> a segmentation model.

A checkpoint is what cellpose saves (``CPnet.save_model``: ``torch.save(net.state_dict())``, from
``CellposeModel`` training, ``cellpose.train.train_seg`` or the GUI). The network is rebuilt with
cellpose's own class (``cellpose.resnet_torch.CPnet``), loaded strictly, exported to ONNX with
``torch.onnx.export`` (H and W dynamic), run by torch and ONNX Runtime on the same made-up tiles
(a max abs difference over ``TOLERANCE``, scaled by outputs larger than 1, refuses the import),
and written through ``genoserve.runtime.authoring.add_version`` (the server's checks and a
warm-up run).

What the checkpoint says, and where genoserve's contract takes it from (cellpose 3.1 sources):

- ``nbase``: the channel widths, read from the weights' shapes (``CellposeModel`` builds
  ``[nchan, 32, 64, 128, 256]``); ``nchan`` the network's input channels (2 by default: the
  channel to segment and an optional nuclear channel).
- four levels with a 2x max-pool between them (``resnet_torch.downsample``): three poolings, so H
  and W must be multiples of 2**3 = 8 (``size_multiple``).
- ``CPnet.forward`` returns (y, style, features): y [B, 3, H, W] is (dY, dX, cell-probability
  logit) (``core.run_net``: "y[...,0] is Y flow; y[...,1] is X flow; y[...,2] is cell
  probability"); the style vector and the per-level features are dropped. The flows are trained
  at 5x unit length (``train._loss_fn_seg``: ``veci = 5. * lbl[:, 1:]``) and divided by 5 before
  the dynamics (``dynamics.compute_masks``: ``dP * ... / 5.``): the served graph divides them, as
  genoserve's flows are unit flows.
- ``diam_mean`` (saved since cellpose 2.0): the diameter training rescaled cells to; it is the
  contract's ``diameter`` (a request's diameter D rescales by diam_mean / D, as
  ``CellposeModel.eval(diameter=D)``). ``diam_labels`` (the training masks' mean diameter) is what
  ``eval(diameter=None)`` rescales for; it goes into the description.
- tiles of ``bsize=224`` with ``tile_overlap=0.1`` and the 1st/99th percentile normalisation
  (``CellposeModel.eval`` and ``transforms.normalize99`` defaults).
- the served model takes ``channels`` image channels (1 by default); the network's other inputs
  are zeros, added inside the graph, as ``transforms.convert_image`` pads missing channels
  (``eval(channels=[0, 0])`` on a grey image gives the network [image, zeros]).
- cellpose pads every rescaled image with at least 8 zero pixels on each side, up to a multiple of
  16 (``core.run_net`` with ``transforms.get_pad_yx``), before tiling it, and runs the network on
  the bare tiles: the contract's ``pad`` (8) makes genoserve's family do the same, and the graph
  is the network alone.
"""

from __future__ import annotations

import importlib
import io
import math
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml
from torch import nn

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime.authoring import NewModel, VersionCheck, add_version
from genoserve.runtime.registry import MODEL_FILE

Array = np.ndarray[Any, Any]

INPUT = "image"
OUTPUT = "flows_cellprob"
LABELS = ["dy", "dx", "cellprob_logit"]
#: Length of the flows cellpose trains on (``train._loss_fn_seg``); served flows are unit length.
FLOW_SCALE = 5.0
#: ``CellposeModel.eval``'s tile (``bsize``) and ``tile_overlap``.
TILE = 224
TILE_OVERLAP = 0.1
#: Zero pixels around every image before it is tiled (``transforms.get_pad_yx``: ``extra * div // 2``
#: = 8 on each side, then up to a multiple of 16): the contract's ``pad``, done by the family.
PAD = 8
#: ``transforms.normalize99``'s percentiles.
PERCENTILES = (1.0, 99.0)
OPSET = 17
#: Largest max abs difference between ONNX Runtime's and torch's outputs an import accepts, in
#: units of the outputs' largest magnitude where that exceeds 1 (float32 rounding grows with it:
#: a nuclear input the network was trained with zeros on gives logits in the hundreds on made-up
#: tiles).
TOLERANCE = 1e-4
#: Besides the serving tile, the graph is checked at this (H, W), rounded up to the size multiple.
OTHER_SHAPE = (64, 96)
#: The first convolution of each level: its weight is [out, in, 3, 3].
_LEVEL_CONV = re.compile(r"downsample\.down\.res_down_(\d+)\.conv\.conv_0\.2\.weight")


@dataclass(frozen=True)
class Checkpoint:
    """A Cellpose CPnet checkpoint: its weights and what they say about the network."""

    path: Path
    state: dict[str, torch.Tensor]
    nbase: tuple[int, ...]  # (nchan, width of each level)
    diam_mean: float | None  # None: saved before cellpose 2.0
    diam_labels: float | None

    @property
    def nchan(self) -> int:
        return self.nbase[0]

    @property
    def size_multiple(self) -> int:
        """H and W of the network's input must be multiples of this (2 ** poolings)."""
        return int(2 ** (len(self.nbase) - 2))


def _refuse(path: Path, rule: str) -> InvalidArgument:
    return InvalidArgument.field("checkpoint", f"{path}: {rule}")


def _cellpose() -> Any:
    """cellpose.resnet_torch (the import extra); untyped, so imported by name."""
    return importlib.import_module("cellpose.resnet_torch")


def read_checkpoint(path: Path) -> Checkpoint:
    """Load and describe a checkpoint; INVALID_ARGUMENT (field ``checkpoint``) naming what makes
    it something other than a Cellpose 2.x/3.x CPnet segmentation network."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise _refuse(path, f"not a PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _refuse(path, "not a state dict (cellpose saves CPnet.state_dict())")
    if "W2" in state:
        raise _refuse(path, "a Cellpose 4 (Cellpose-SAM, transformer) model; only the CPnet U-Net of cellpose 2-3")
    levels = sorted(int(m.group(1)) for key in state if (m := _LEVEL_CONV.fullmatch(key)))
    if not levels:
        if any(".conv_down_" in key for key in state):
            raise _refuse(path, "a CPnet trained with residual_on=False (cellpose 2), which cellpose 3 cannot load")
        raise _refuse(path, "no downsample.down.res_down_0 weights: not a Cellpose CPnet checkpoint")
    if levels != list(range(len(levels))) or len(levels) < 2:
        raise _refuse(path, f"levels {levels} of the CPnet are not 0..n (n >= 1)")
    weights = [state[f"downsample.down.res_down_{n}.conv.conv_0.2.weight"] for n in levels]
    if any(w.ndim != 4 for w in weights):
        raise _refuse(path, "a 3D (conv_3D) CPnet; only 2D networks are covered")
    output = state.get("output.2.weight")
    if output is None or output.shape[0] != 3:
        outs = "no output layer" if output is None else f"{output.shape[0]} output maps"
        raise _refuse(path, f"{outs}; a segmentation CPnet has 3 (dY, dX, cell probability)")
    if "style_off" in path.name:
        raise _refuse(path, "named as a cellpose 2 model trained with style_on=False, which cellpose 3 ignores")
    nbase = (int(weights[0].shape[1]), *(int(w.shape[0]) for w in weights))
    diam_mean = float(state["diam_mean"].item()) if "diam_mean" in state else None
    diam_labels = float(state["diam_labels"].item()) if "diam_labels" in state else None
    return Checkpoint(path, state, nbase, diam_mean, diam_labels)


def load_network(checkpoint: Checkpoint) -> nn.Module:
    """cellpose's CPnet with the checkpoint's weights (every weight must fit), in eval mode."""
    net: nn.Module = _cellpose().CPnet(list(checkpoint.nbase), 3, 3, mkldnn=False)
    state = dict(checkpoint.state)
    for key in ("diam_mean", "diam_labels"):  # absent from files of cellpose < 2.0
        state.setdefault(key, net.state_dict()[key])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:600]
        rule = f"does not fit cellpose's CPnet(nbase={list(checkpoint.nbase)}): {detail}"
        raise _refuse(checkpoint.path, rule) from exc
    return net.eval()


class _Style(nn.Module):
    """cellpose's ``make_style`` (average over H and W, L2-normalised) as a mean over the spatial
    axes: its ``avg_pool2d(kernel_size=x.shape[2:])`` would keep the export example's size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        style = x.mean(dim=(2, 3))
        return style / torch.sum(style**2, dim=1, keepdim=True) ** 0.5


class Served(nn.Module):
    """The served graph: ``channels`` image channels (zeros appended up to the network's ``nchan``),
    cellpose's network -> (dY, dX) / FLOW_SCALE and the cell-probability logit, float32
    [B, 3, H, W]."""

    def __init__(self, net: nn.Module, channels: int, nchan: int) -> None:
        super().__init__()
        self.net = net
        self.missing = nchan - channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.missing:
            zeros = torch.zeros_like(x[:, :1]).expand(-1, self.missing, -1, -1)
            x = torch.cat([x, zeros], dim=1)
        y = self.net(x)[0]
        return torch.cat([y[:, :2] / FLOW_SCALE, y[:, 2:]], dim=1)


def export_onnx(net: nn.Module, channels: int, nchan: int, tile: int) -> bytes:
    """The served graph of ``net`` as ONNX: input ``image`` [batch, channels, H, W], output
    ``flows_cellprob`` [batch, 3, H, W], batch, H and W dynamic (traced on a ``tile`` tile)."""
    exportable = Served(net, channels, nchan).eval()
    original = net.make_style
    net.make_style = _Style()
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch", 2: "height", 3: "width"}}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: the check against torch decides
            torch.onnx.export(
                exportable, (torch.zeros(1, channels, tile, tile),), buffer,  # type: ignore[arg-type]
                input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=axes, opset_version=OPSET, dynamo=False,
            )  # fmt: skip
    finally:
        net.make_style = original
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = "genoserve models import cellpose"
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def check_tiles(channels: int, shape: tuple[int, int], seed: int = 0) -> Array:
    """Made-up normalised tiles float32 [2, channels, H, W]: smooth blobs on a dark background
    with noise, in the 0..1 range of normalised images (so the check exercises the network's
    usual operating range, not only zeros)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    tiles = rng.normal(0.05, 0.05, (2, channels, *shape)).astype(np.float32)
    for b in range(2):
        for _ in range(12):
            cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(4, 12)
            tiles[b] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)).astype(np.float32)
    return tiles


def reference_output(net: nn.Module, x: Array, nchan: int) -> Array:
    """What the served graph computes on ``x`` [B, channels, H, W], with cellpose's own forward:
    zeros up to ``nchan`` channels; float32 [B, 3, H, W] = (dY / 5, dX / 5, cell-probability logit)."""
    full = np.zeros((x.shape[0], nchan, x.shape[2], x.shape[3]), np.float32)
    full[:, : x.shape[1]] = x
    with torch.no_grad():
        y = net(torch.from_numpy(full))[0].numpy()
    return np.concatenate([y[:, :2] / FLOW_SCALE, y[:, 2:]], axis=1).astype(np.float32)


def onnx_difference(graph: bytes, net: nn.Module, channels: int, nchan: int, size_multiple: int) -> tuple[float, float]:
    """(max abs difference between ONNX Runtime and cellpose's forward, max abs of cellpose's
    outputs) on made-up tiles of the serving size and of ``OTHER_SHAPE`` (rounded up to
    ``size_multiple``)."""
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    tile = serving_tile(size_multiple)
    other = tuple(math.ceil(n / size_multiple) * size_multiple for n in OTHER_SHAPE)
    worst, scale = 0.0, 0.0
    for shape in ((tile, tile), (other[0], other[1])):
        x = check_tiles(channels, shape)
        got = np.asarray(session.run(None, {INPUT: x})[0])
        want = reference_output(net, x, nchan)
        worst = max(worst, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
    return worst, scale


def serving_tile(size_multiple: int) -> int:
    """cellpose's 224-pixel tile, rounded up to a multiple of ``size_multiple``."""
    return math.ceil(TILE / size_multiple) * size_multiple


def preprocessing(checkpoint: Checkpoint, diameter: float) -> dict[str, Any]:
    """The model.yaml ``preprocessing`` block (``SegmentationPreprocessing``) of a checkpoint."""
    return {
        "tile": serving_tile(checkpoint.size_multiple),
        "tile_overlap": TILE_OVERLAP,
        "diameter": diameter,
        "normalize_percentiles": list(PERCENTILES),
        "size_multiple": checkpoint.size_multiple,
        "pad": PAD,
    }


def describe(checkpoint: Checkpoint, channels: int) -> str:
    labels = "unknown" if checkpoint.diam_labels is None else f"{checkpoint.diam_labels:.4g}"
    unserved = ", ".join(str(c) for c in range(channels + 1, checkpoint.nchan + 1))
    zeros = f" (network input {unserved}: zeros)" if unserved else ""
    return (
        f"Cellpose CPnet imported from {checkpoint.path.name}: nbase {list(checkpoint.nbase)}, "
        f"{channels} of {checkpoint.nchan} network channel(s) served{zeros}; training masks' mean diameter "
        f"(diam_labels) {labels} px."
    )


def _check_existing(repository: Path, name: str, pre: dict[str, Any]) -> None:
    """A model already in ``repository`` keeps its model.yaml: refuse a checkpoint needing other
    preprocessing (another diameter, another network depth) as its next version."""
    path = repository / name / MODEL_FILE
    if not path.is_file():
        return
    have = (yaml.safe_load(path.read_text()) or {}).get("preprocessing") or {}
    differ = sorted(k for k in pre if have.get(k) != pre[k])
    if differ:
        raise InvalidArgument.field(
            "name",
            f"{name} in {repository} has preprocessing {[f'{k}={have.get(k)}' for k in differ]}, this checkpoint "
            f"needs {[f'{k}={pre[k]}' for k in differ]}: import it under another name",
        )


@dataclass(frozen=True)
class CellposeImport:
    check: VersionCheck
    checkpoint: Checkpoint
    channels: int
    diameter: float
    onnx_bytes: int
    max_abs_diff: float  # ONNX Runtime vs cellpose's forward on made-up tiles
    output_scale: float  # the largest |output| of cellpose's forward there


def import_cellpose(
    path: Path,
    repository: Path,
    name: str,
    settings: RuntimeSettings,
    diameter: float | None = None,
    channels: int = 1,
    description: str = "",
) -> CellposeImport:
    """Convert the checkpoint at ``path`` and add it as the next version of ``name``.

    ``diameter``: the model's mean cell diameter (default: the checkpoint's ``diam_mean``; needed
    for files from cellpose < 2.0). ``channels``: image channels the served model takes (1 to the
    network's ``nchan``; the rest are zeros)."""
    checkpoint = read_checkpoint(path)
    if not 1 <= channels <= checkpoint.nchan:
        raise InvalidArgument.field("channels", f"must be 1..{checkpoint.nchan} (the network's nchan), got {channels}")
    diameter = diameter if diameter is not None else checkpoint.diam_mean
    if diameter is None:
        raise InvalidArgument.field("diameter", f"{path} has no diam_mean (cellpose < 2.0): give the model's diameter")
    if not (math.isfinite(diameter) and diameter > 0):
        raise InvalidArgument.field("diameter", f"must be a positive number of pixels, got {diameter}")
    pre = preprocessing(checkpoint, float(diameter))
    _check_existing(repository, name, pre)
    net = load_network(checkpoint)
    graph = export_onnx(net, channels, checkpoint.nchan, pre["tile"])
    difference, scale = onnx_difference(graph, net, channels, checkpoint.nchan, checkpoint.size_multiple)
    limit = TOLERANCE * max(1.0, scale)
    if not difference <= limit:
        rule = f"the ONNX graph differs from cellpose's network by {difference:.3g} (max abs; limit {limit:.3g})"
        raise InvalidArgument.field("checkpoint", rule)
    new = NewModel("segmentation", {OUTPUT: LABELS}, pre, description or describe(checkpoint, channels))
    with tempfile.TemporaryDirectory(prefix="genoserve-import-") as folder:
        onnx_path = Path(folder) / "model.onnx"
        onnx_path.write_bytes(graph)
        check = add_version(repository, name, onnx_path, settings, new)
    return CellposeImport(check, checkpoint, channels, float(diameter), len(graph), difference, scale)
