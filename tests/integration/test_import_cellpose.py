"""`genoserve models import cellpose` end to end: a Cellpose 3 checkpoint trained here with
cellpose's own ``train_seg`` on the real nuclei image, imported by the CLI, served by a real server
and worker; the masks of ``genoserve predict segmentation`` agree with
``cellpose.models.CellposeModel(pretrained_model=CHECKPOINT).eval`` at the same settings.

The committed checkpoint (tests/data/segmentation/cellpose3_cpnet_small.pth, see its .md) is a
CPnet with nbase [2, 8, 16, 32, 64]: ``CellposeModel`` only builds [nchan, 32, 64, 128, 256], so
the fixture widens it to that size (the extra channels all zero: the same function) and saves it
with ``CPnet.save_model``. Needs the ``import`` extra (torch, cellpose 3), which ``make setup``
installs: without it these tests fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml
from cellpose import core as cellpose_core
from cellpose import models as cellpose_models
from cellpose import train as cellpose_train
from cellpose.resnet_torch import CPnet

from genoserve.client import Client, masks_of
from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import RuntimeSettings
from genoserve.importers import cellpose as importer
from genoserve.segmentation import metrics
from genoserve.segmentation.normalize import percentile_normalize, resize, scaled_shape
from genoserve.v1 import jobs_pb2
from tests.support.jobs import WorkerProcess, wait_for_job
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

DATA = REPO / "tests" / "data" / "segmentation"
SMALL = DATA / "cellpose3_cpnet_small.pth"
IMAGE = DATA / "stardist_tests_img2d_256.tif"
TRUTH = DATA / "stardist_tests_mask2d_256.tif"
NAME = "cellpose-imported"
#: The acceptance figure: AP at IoU 0.5 of the served masks against cellpose's own.
MIN_AP50 = 0.99


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "genoserve.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)  # fmt: skip


def train_checkpoint(folder: Path, epochs: int) -> Path:
    """The committed checkpoint's recipe (400 epochs, one thread): cellpose's ``train_seg`` on the
    real image and its 65 true masks, grey ([0, 0] channels: the network's second input zeros),
    8 random 224-pixel crops a step (rotated, rescaled so nuclei are ``diam_mean`` = 17 pixels)."""
    torch.manual_seed(0)
    net = CPnet([2, 8, 16, 32, 64], 3, 3, diam_mean=17.0)
    path, _, _ = cellpose_train.train_seg(
        net, train_data=[tifffile.imread(IMAGE)], train_labels=[tifffile.imread(TRUTH).astype(np.int32)],
        channels=[0, 0], batch_size=8, nimg_per_epoch=8, n_epochs=epochs, learning_rate=0.005,
        save_path=folder, model_name="cp3_small", min_train_masks=1, save_every=100,
    )  # fmt: skip
    return Path(path)


def standard_size(small: Path, out: Path) -> Path:
    """``small`` as a CPnet of CellposeModel's size (nbase [nchan, 32, 64, 128, 256]): every
    tensor zero-padded (BatchNorm of the new channels: weight 0, bias 0, running var 1, so they
    stay 0 through the network and the style's norm), saved by ``CPnet.save_model``."""
    state = torch.load(small, map_location="cpu", weights_only=True)
    nchan = int(state["downsample.down.res_down_0.conv.conv_0.2.weight"].shape[1])
    net = CPnet([nchan, 32, 64, 128, 256], 3, 3)
    wide = {}
    for key, target in net.state_dict().items():
        source = state[key]
        if source.shape == target.shape:
            wide[key] = source.clone()
            continue
        padded = torch.ones_like(target) if key.endswith("running_var") else torch.zeros_like(target)
        padded[tuple(slice(0, n) for n in source.shape)] = source
        wide[key] = padded
    net.load_state_dict(wide)
    net.save_model(str(out))
    return out


@dataclass
class Rig:
    root: Path
    checkpoint: Path
    server: ServerProcess
    worker: WorkerProcess
    image: np.ndarray
    import_output: str
    diam_labels: float


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("import-cellpose")
    checkpoint = standard_size(SMALL, root / "cellpose3_nuclei")
    models = root / "models"
    done = cli("models", "import", "cellpose", str(checkpoint), "--name", NAME, "--model-dir", str(models))
    assert done.returncode == 0, done.stderr
    config = root / "genoserve.yaml"
    config.write_text(yaml.safe_dump({
        "runtime": {"model_dir": str(models)},
        "jobs": {"data_dir": str(root / "data"), "input_roots": [str(root)], "output_roots": [str(root)],
                 "shard_lease_s": 5.0, "sweep_interval_s": 0.5},
        "worker": {"metrics_dir": str(root / "data" / "metrics")},
    }))  # fmt: skip
    worker = WorkerProcess(config, root / "worker.log", "--queues", "segmentation").start()
    server = ServerProcess("--config", str(config), model_dir=models, log_path=root / "server.log").start()
    labels = float(torch.load(checkpoint, weights_only=True)["diam_labels"].item())
    yield Rig(root, checkpoint, server, worker, np.asarray(tifffile.imread(IMAGE)), done.stdout, labels)
    server.terminate()
    worker.stop()


def test_import_writes_the_segmentation_contract(rig: Rig) -> None:
    spec = yaml.safe_load((rig.root / "models" / NAME / "model.yaml").read_text())
    assert spec["family"] == "segmentation"
    [x] = spec["inputs"]
    [y] = spec["outputs"]
    assert (x["name"], x["dtype"], x["shape"]) == ("image", "float32", [-1, 1, -1, -1])  # grey: --channels 1
    assert (y["name"], y["dtype"], y["shape"]) == ("flows_cellprob", "float32", [-1, 3, -1, -1])
    assert y["labels"] == ["dy", "dx", "cellprob_logit"]
    assert spec["preprocessing"] == {
        "tile": 224, "tile_overlap": 0.1, "diameter": 17.0, "normalize_percentiles": [1.0, 99.0], "size_multiple": 8,
        "pad": 8,
    }  # fmt: skip
    assert "CPnet nbase [2, 32, 64, 128, 256], diameter 17 px (diam_labels 9.027 px)" in rig.import_output
    assert (rig.root / "models" / NAME / "1" / "model.onnx").stat().st_size < 30_000_000
    with Client(rig.server.address) as client:
        [info] = client.list_models(family="segmentation")
    assert info.name == NAME


def test_onnx_equals_cellpose_network_on_a_real_tile(rig: Rig) -> None:
    """The served graph and cellpose's own CPnet (as CellposeModel loads it) on the same tile: the
    real image normalised, rescaled for its nuclei (diam_labels) as a request does, a 224 x 224
    crop. The graph adds the nuclear channel (zeros), drops the style output and divides the flows
    by 5; cellpose's ``run_net`` gives the network the bare tile."""
    import onnxruntime as ort

    normalised = percentile_normalize(rig.image.astype(np.float32)[None])
    scaled = resize(normalised, scaled_shape((256, 256), 17.0 / rig.diam_labels))  # [1, 482, 482]
    assert scaled.shape == (1, 482, 482)
    tile = np.ascontiguousarray(scaled[None, :, 100:324, 200:424])  # [1, 1, 224, 224]
    session = ort.InferenceSession(str(rig.root / "models" / NAME / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    served = np.asarray(session.run(None, {"image": tile})[0])
    net = cellpose_models.CellposeModel(gpu=False, pretrained_model=str(rig.checkpoint)).net
    network_input = np.zeros((1, 2, 224, 224), np.float32)
    network_input[:, :1] = tile
    y = cellpose_core._forward(net, network_input)[0]  # as run_net calls the network
    expected = np.concatenate([y[:, :2] / 5.0, y[:, 2:]], axis=1)
    difference = float(np.abs(served - expected).max())
    print(f"ONNX vs cellpose CPnet on a real 224x224 tile: max abs diff {difference:.2g}")
    assert difference <= 1e-4
    assert (y[:, 2] > 0).mean() > 0.05  # the tile holds nuclei the network finds (about 10% of its pixels)


#: Request diameters besides cellpose's default (diam_labels): 0.6x and 1.7x the model's diam_mean
#: (17 px), so the 256-pixel image is rescaled to 426 and 150 pixels (cellpose truncates the size).
DIAMETERS = (0.6 * 17.0, 1.7 * 17.0)


@pytest.mark.parametrize("diameter", [None, *DIAMETERS], ids=["diam_labels", "0.6x", "1.7x"])
def test_served_masks_agree_with_cellpose_eval(rig: Rig, diameter: float | None) -> None:
    """At cellpose's settings (channels [0, 0], 1st/99th percentile normalisation, flow_threshold
    0.4, cellprob_threshold 0, niter 200, min_size 15), at its default diameter (diam_labels) and
    at two others, where both rescale the image: the same padding, tiles, taper and sizes, so the
    flows are cellpose's to float32 rounding, and the masks agree."""
    diameter = diameter or rig.diam_labels
    out = rig.root / f"predicted-{diameter:.3f}.tif"
    done = cli("predict", "segmentation", "--address", rig.server.address, "--model", NAME, "--image", str(IMAGE),
               "--output", str(out), "--diameter", repr(diameter))  # fmt: skip
    assert done.returncode == 0, done.stderr
    served = np.asarray(tifffile.imread(out))
    model = cellpose_models.CellposeModel(gpu=False, pretrained_model=str(rig.checkpoint))
    masks, flows, _ = model.eval(rig.image, channels=[0, 0], diameter=diameter, flow_threshold=0.4,
                                 cellprob_threshold=0.0, niter=200, min_size=15)  # fmt: skip
    with Client(rig.server.address) as client:
        response = client.segment(NAME, rig.image, diameter=diameter, return_flows=True, timeout=120)
    np.testing.assert_array_equal(masks_of(response), served)
    served_flows = np.frombuffer(response.flows.data, np.float32).reshape(2, 256, 256)
    served_logits = np.frombuffer(response.cellprob.data, np.float32).reshape(256, 256)
    ap, tp, fp, fn = metrics.average_precision(masks, served)[0.5]
    flow_diff = np.abs(served_flows - flows[1] / 5.0)  # cellpose's dP is 5x unit flows
    logit_diff = np.abs(served_logits - flows[2])
    print(f"diameter {diameter:.4f} px: AP@0.5 served vs cellpose {ap:.4f} (TP {tp}, FP {fp}, FN {fn}); "
          f"flows max abs diff {flow_diff.max():.2g} (mean {flow_diff.mean():.2g}, unit flows), "
          f"cell-probability logit max abs diff {logit_diff.max():.2g} (mean {logit_diff.mean():.2g})")  # fmt: skip
    assert int(masks.max()) >= (60 if diameter < 20 else 25)  # the nuclei found (65 true masks; fewer at 1.7x)
    assert ap >= MIN_AP50
    assert flow_diff.max() < 1e-3
    assert logit_diff.max() < 1e-2


def test_job_segments_with_the_imported_model(rig: Rig) -> None:
    folder = rig.root / "images"
    folder.mkdir()
    shutil.copy(IMAGE, folder / "nuclei.tif")
    out = rig.root / "job-out"
    with Client(rig.server.address) as client:
        job = client.submit_job("segmentation.segment_images", [str(folder)], str(out),
                                {"model": NAME, "diameter": repr(rig.diam_labels)})  # fmt: skip
        done = wait_for_job(client, job.id, timeout=240)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, (done.error, rig.worker.log())
        direct = masks_of(client.segment(NAME, rig.image, diameter=rig.diam_labels, timeout=120))
    np.testing.assert_array_equal(tifffile.imread(out / "nuclei.labels.tif"), direct)
    assert direct.max() >= 60


def test_widened_checkpoint_computes_what_the_committed_one_does(tmp_path: Path) -> None:
    small = importer.load_network(importer.read_checkpoint(SMALL))
    wide = importer.load_network(importer.read_checkpoint(standard_size(SMALL, tmp_path / "wide")))
    x = importer.check_tiles(1, (64, 96))
    np.testing.assert_allclose(importer.reference_output(wide, x, 2), importer.reference_output(small, x, 2),
                               atol=1e-5)  # fmt: skip


def test_a_checkpoint_train_seg_just_saved_imports(tmp_path: Path) -> None:
    """The recipe runs (one step here), and its file (nbase [2, 8, 16, 32, 64], not CellposeModel's)
    imports (serving both channels): served graph within 1e-4 of cellpose's forward (relative to
    outputs beyond 1), the contract read from the file."""
    path = train_checkpoint(tmp_path, epochs=1)
    done = importer.import_cellpose(path, tmp_path / "models", "fresh", RuntimeSettings(), channels=2)
    assert done.checkpoint.nbase == (2, 8, 16, 32, 64)
    assert done.max_abs_diff <= 1e-4 * max(1.0, done.output_scale)
    spec = yaml.safe_load((tmp_path / "models" / "fresh" / "model.yaml").read_text())
    assert spec["inputs"][0]["shape"] == [-1, 2, -1, -1]
    assert spec["preprocessing"]["diameter"] == 17.0
    assert done.checkpoint.diam_labels == pytest.approx(9.027, abs=1e-3)  # train_seg measured the masks


def refused(path: Path, tmp_path: Path, **options: Any) -> str:
    with pytest.raises(InvalidArgument) as caught:
        importer.import_cellpose(path, tmp_path / "models", "refused", RuntimeSettings(), **options)
    assert not (tmp_path / "models" / "refused").exists()
    return str(caught.value.message)


def test_what_is_not_a_cellpose_2_or_3_checkpoint_is_refused(tmp_path: Path) -> None:
    state = torch.load(SMALL, weights_only=True)
    torch.save({**state, "W2": torch.zeros(1)}, tmp_path / "cp4")
    assert "Cellpose 4" in refused(tmp_path / "cp4", tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert "not a PyTorch checkpoint" in refused(tmp_path / "notes.txt", tmp_path)
    torch.save({k: v for k, v in state.items() if not k.startswith("output.")}, tmp_path / "no-output")
    assert "no output layer" in refused(tmp_path / "no-output", tmp_path)
    torch.save({k: v for k, v in state.items() if k != "diam_mean"}, tmp_path / "cellpose1")
    assert "no diam_mean" in refused(tmp_path / "cellpose1", tmp_path)
    assert "must be 1..2" in refused(SMALL, tmp_path, channels=3)
