"""Segmentation end to end: a real server and worker on the committed cellpose-nuclei model and
the real nuclei image (tests/data/segmentation)."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from genoserve.client import Client, masks_of
from genoserve.core.errors import InvalidArgument, NotFound
from genoserve.runtime.registry import read_spec
from genoserve.segmentation import metrics, stats
from genoserve.segmentation.contract import SegmentationContract
from genoserve.segmentation.pipeline import segment_sync
from genoserve.v1 import jobs_pb2, segmentation_pb2, segmentation_pb2_grpc, tensor_pb2
from tests.support.jobs import WorkerProcess, wait_for_job
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

MODEL = "cellpose-nuclei"
DATA = REPO / "tests" / "data" / "segmentation"
MAX_PIXELS = 1_000_000


@dataclass
class Rig:
    root: Path
    server: ServerProcess
    worker: WorkerProcess
    image: np.ndarray
    truth: np.ndarray
    local: Any  # [B, C, t, t] -> [B, 3, t, t] over a local ONNX Runtime session
    contract: SegmentationContract
    metrics: dict[str, float]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    import onnxruntime as ort

    root = tmp_path_factory.mktemp("segmentation")
    models = root / "models"
    shutil.copytree(REPO / "models" / MODEL, models / MODEL)
    config = root / "genoserve.yaml"
    config.write_text(yaml.safe_dump({
        "runtime": {"model_dir": str(models)},
        # Small reconstruction blocks, so that every served image is reconstructed in blocks and
        # the tests comparing with the local (whole-image) pipeline check the block seams too.
        "segmentation": {"max_pixels": MAX_PIXELS, "reconstruction_block": 128},
        "jobs": {"data_dir": str(root / "data"), "input_roots": [str(root)], "output_roots": [str(root)],
                 "shard_lease_s": 5.0, "sweep_interval_s": 0.5},
        "worker": {"metrics_dir": str(root / "data" / "metrics")},
    }))  # fmt: skip
    worker = WorkerProcess(config, root / "worker.log", "--queues", "segmentation").start()
    server = ServerProcess("--config", str(config), model_dir=models, log_path=root / "server.log").start()
    spec = read_spec(models / MODEL)
    session = ort.InferenceSession(str(models / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

    def local(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {"image": batch})[0])

    yield Rig(
        root, server, worker, np.asarray(tifffile.imread(DATA / "stardist_tests_img2d_256.tif")),
        np.asarray(tifffile.imread(DATA / "stardist_tests_mask2d_256.tif")).astype(np.int32),
        local, SegmentationContract.of(spec), dict(spec.versions[-1].metrics),
    )  # fmt: skip
    server.terminate()
    worker.stop()


def test_health_and_model_listed(rig: Rig) -> None:
    with Client(rig.server.address) as client:
        assert client.health("genoserve.v1.Segmentation") == "SERVING"
        [info] = client.list_models(family="segmentation")
    assert info.name == MODEL


def test_segment_real_image_matches_local_pipeline_and_recorded_ap(rig: Rig) -> None:
    with Client(rig.server.address) as client:
        response = client.segment(MODEL, rig.image, timeout=60)
    masks = masks_of(response)
    assert masks.shape == (256, 256)
    assert masks.dtype == np.uint16
    local = segment_sync(rig.image.astype(np.float32)[None], rig.contract, rig.local)
    np.testing.assert_array_equal(masks, local.masks)
    assert response.n_cells == masks.max() == len(response.cells)
    ap = metrics.average_precision(rig.truth, masks)
    # The served result scores what model.yaml records for the real image.
    assert ap[0.5][0] == pytest.approx(rig.metrics["real_ap50"], abs=1e-6)
    expected = stats.cell_stats(masks.astype(np.int32), rig.image.astype(np.float32))
    cell = response.cells[3]
    assert cell.label == 4
    assert cell.area == expected.area[3]
    assert cell.centroid_y == pytest.approx(expected.centroid_y[3], rel=1e-5)
    assert [cell.bbox_min_y, cell.bbox_min_x, cell.bbox_max_y, cell.bbox_max_x] == expected.bbox[3].tolist()
    assert cell.mean_intensity == pytest.approx(expected.mean_intensity[3], rel=1e-5)
    assert not response.HasField("flows")


def test_tiff_and_png_bytes_give_the_same_masks_and_flows_on_request(rig: Rig) -> None:
    tiff = (DATA / "stardist_tests_img2d_256.tif").read_bytes()
    png = io.BytesIO()
    Image.fromarray(rig.image).save(png, format="PNG")
    with Client(rig.server.address) as client:
        from_array = masks_of(client.segment(MODEL, rig.image, timeout=60))
        from_tiff = client.segment(MODEL, tiff, return_flows=True, timeout=60)
        from_png = masks_of(client.segment(MODEL, png.getvalue(), timeout=60))
    np.testing.assert_array_equal(masks_of(from_tiff), from_array)
    np.testing.assert_array_equal(from_png, from_array)
    assert list(from_tiff.flows.shape) == [2, 256, 256]
    assert list(from_tiff.cellprob.shape) == [256, 256]
    # Pixels inside masks have positive cell-probability logits.
    logits = np.frombuffer(from_tiff.cellprob.data, np.float32).reshape(256, 256)
    assert (logits[from_array > 0] > 0).mean() > 0.95


def test_thresholds_change_the_result(rig: Rig) -> None:
    with Client(rig.server.address) as client:
        default = client.segment(MODEL, rig.image, timeout=60)
        strict = client.segment(MODEL, rig.image, min_size=60, timeout=60)
        nothing = client.segment(MODEL, rig.image, cellprob_threshold=40.0, timeout=60)
    assert 0 < strict.n_cells < default.n_cells
    assert min(c.area for c in strict.cells) >= 60
    assert nothing.n_cells == 0
    assert not masks_of(nothing).any()


def test_large_rgb_image_is_tiled_and_channels_select(rig: Rig) -> None:
    big = np.tile(rig.image, (3, 2))[:700, :500]
    rgb = np.dstack([np.zeros_like(big), big, np.zeros_like(big)])
    with Client(rig.server.address) as client:
        response = client.segment(MODEL, rgb, channels=[1], timeout=120)
    masks = masks_of(response)
    assert masks.shape == (700, 500)
    local = segment_sync(big.astype(np.float32)[None], rig.contract, rig.local)
    # Served: 24 reconstruction blocks of 128 px (plus halo); local: the whole image at once.
    np.testing.assert_array_equal(masks, local.masks)
    assert response.n_cells > 65 * 2


def test_diameter_rescales(rig: Rig) -> None:
    with Client(rig.server.address) as client:
        response = client.segment(MODEL, rig.image, diameter=rig.contract.diameter, timeout=60)
    local = segment_sync(rig.image.astype(np.float32)[None], rig.contract, rig.local)
    np.testing.assert_array_equal(masks_of(response), local.masks)  # own diameter: scale 1


def _raw(array: np.ndarray, dtype: int, shape: list[int] | None = None) -> segmentation_pb2.Image:
    return segmentation_pb2.Image(
        array=tensor_pb2.Tensor(dtype=dtype, shape=shape or list(array.shape), data=array.tobytes())
    )


BAD_REQUESTS = [
    ({"image": segmentation_pb2.Image(encoded=b"")}, "image.encoded", "empty"),
    ({}, "image", "is required"),
    ({"image": segmentation_pb2.Image(encoded=b"GIF89a")}, "image.encoded", "TIFF or PNG"),
    ({"image": _raw(np.zeros((8, 8), np.int64), tensor_pb2.DATA_TYPE_INT64)}, "image.array.dtype", "must be one of"),
    ({"image": _raw(np.zeros((2, 8, 8, 2), np.uint8), tensor_pb2.DATA_TYPE_UINT8)}, "image.array.shape", "rank 4"),
    ({"image": _raw(np.full((8, 8), np.nan, np.float32), tensor_pb2.DATA_TYPE_FLOAT32)}, "image.array.data", "NaN"),
    ({"image": _raw(np.zeros((0, 8), np.uint8), tensor_pb2.DATA_TYPE_UINT8)}, "image.array.shape", "empty"),
    ({"image": _raw(np.zeros((1001, 1000), np.uint8), tensor_pb2.DATA_TYPE_UINT8)}, "image.array.shape", "exceeds"),
    ({"image": _raw(np.zeros((8, 8), np.uint8), tensor_pb2.DATA_TYPE_UINT8, [9, 8])}, "image.array.data", "bytes"),
    ({"channels": [2]}, "channels", "must be in [0, 1)"),
    ({"diameter": -3}, "diameter", ">= 0"),
    ({"flow_threshold": -1}, "flow_threshold", ">= 0"),
    ({"niter": 0}, "niter", "1..10000"),
    ({"min_size": -2}, "min_size", ">= 0"),
]


@pytest.mark.parametrize(("fields", "field", "rule"), BAD_REQUESTS)
def test_bad_requests_are_invalid_argument(rig: Rig, fields: dict[str, Any], field: str, rule: str) -> None:
    request = segmentation_pb2.SegmentRequest(model=MODEL)
    if "image" not in fields and fields:
        request.image.array.CopyFrom(_raw(np.zeros((16, 16), np.uint8), tensor_pb2.DATA_TYPE_UINT8).array)
    for key, value in fields.items():
        if key == "image":
            request.image.CopyFrom(value)
        elif key == "channels":
            request.channels.extend(value)
        else:
            setattr(request, key, value)
    with grpc.insecure_channel(rig.server.address) as channel, pytest.raises(grpc.RpcError) as info:
        segmentation_pb2_grpc.SegmentationStub(channel).Segment(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
    assert rule in info.value.details()


def test_unknown_model_and_missing_model(rig: Rig) -> None:
    with Client(rig.server.address) as client:
        with pytest.raises(NotFound):
            client.segment("no-such-model", rig.image)
        with pytest.raises(InvalidArgument, match="model"):
            client.segment("", rig.image)
        assert client.segment(MODEL, rig.image, timeout=60).n_cells > 0  # still serving


def test_cli_writes_labels_overlay_and_cells(rig: Rig) -> None:
    out = rig.root / "cli"
    out.mkdir()
    command = [
        sys.executable, "-m", "genoserve.cli.main", "predict", "segmentation", "--address", rig.server.address,
        "--image", str(DATA / "stardist_tests_img2d_256.tif"), "--output", str(out / "masks.tif"),
        "--overlay", str(out / "overlay.png"), "--cells", str(out / "cells.csv"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    masks = tifffile.imread(out / "masks.tif")
    with Client(rig.server.address) as client:
        np.testing.assert_array_equal(masks, masks_of(client.segment(MODEL, rig.image, timeout=60)))
    assert f"{masks.max()} cells" in done.stdout
    assert np.asarray(Image.open(out / "overlay.png")).shape == (256, 256, 3)
    with open(out / "cells.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == masks.max()
    assert int(rows[0]["area"]) == int((masks == 1).sum())
    assert {r["image"] for r in rows} == {"stardist_tests_img2d_256"}  # the file's stem, as the job writes
    bad = subprocess.run([*command[:-6], "--image", str(rig.root / "genoserve.yaml"), "--output", str(out / "x.tif")],
                         capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert bad.returncode == 2
    assert "INVALID_ARGUMENT" in bad.stderr
    assert "TIFF or PNG" in bad.stderr


def test_cli_segments_each_page_of_a_stack_as_the_job_does(rig: Rig) -> None:
    out = rig.root / "cli-stack"
    out.mkdir()
    pages = [rig.image, np.ascontiguousarray(rig.image.T), np.ascontiguousarray(rig.image[:, ::-1])]
    tifffile.imwrite(out / "stack.tif", np.stack(pages), photometric="minisblack")
    command = [
        sys.executable, "-m", "genoserve.cli.main", "predict", "segmentation", "--address", rig.server.address,
        "--image", str(out / "stack.tif"), "--output", str(out / "masks.tif"),
        "--overlay", str(out / "overlay.png"), "--cells", str(out / "cells.csv"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    with Client(rig.server.address) as client:
        direct = [masks_of(client.segment(MODEL, page, timeout=60)) for page in pages]
    # One label page per input page (not the pages read as channels of one image).
    with tifffile.TiffFile(out / "masks.tif") as tif:
        written = [page.asarray() for page in tif.pages]
    assert len(written) == 3
    for got, want in zip(written, direct, strict=True):
        np.testing.assert_array_equal(got, want)
    for k in range(3):
        assert np.asarray(Image.open(out / f"overlay_p{k:04d}.png")).shape == (256, 256, 3)
    with open(out / "cells.csv") as handle:
        rows = list(csv.DictReader(handle))
    counts = {f"stack_p{k:04d}": int(m.max()) for k, m in enumerate(direct)}
    assert {n: sum(r["image"] == n for r in rows) for n in counts} == counts  # names as the job's
    assert f"{sum(counts.values())} cells" in done.stdout


def test_job_segments_a_folder_and_a_stack(rig: Rig) -> None:
    folder = rig.root / "images"
    folder.mkdir()
    shutil.copy(DATA / "stardist_tests_img2d_256.tif", folder / "a.tif")
    Image.fromarray(np.ascontiguousarray(rig.image[::-1])).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    stack = rig.root / "stack.tif"
    tifffile.imwrite(stack, np.stack([rig.image, rig.image.T, rig.image[:, ::-1]]), photometric="minisblack")
    out = rig.root / "job-out"
    with Client(rig.server.address) as client:
        job = client.submit_job("segmentation.segment_images", [str(folder), str(stack)], str(out),
                                {"overlays": "true", "shard_size": "2"})  # fmt: skip
        done = wait_for_job(client, job.id, timeout=240)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, (done.error, rig.worker.log())
        direct = {
            "a": masks_of(client.segment(MODEL, rig.image, timeout=60)),
            "b": masks_of(client.segment(MODEL, np.ascontiguousarray(rig.image[::-1]), timeout=60)),
            "stack_p0001": masks_of(client.segment(MODEL, np.ascontiguousarray(rig.image.T), timeout=60)),
        }
    names = ["a", "b", "stack_p0000", "stack_p0001", "stack_p0002"]
    assert sorted(Path(p).name for p in done.outputs) == sorted(
        [*(f"{n}.labels.tif" for n in names), *(f"{n}.overlay.png" for n in names), "cells.csv"]
    )
    for name, masks in direct.items():
        np.testing.assert_array_equal(tifffile.imread(out / f"{name}.labels.tif"), masks)
    with open(out / "cells.csv") as handle:
        rows = list(csv.DictReader(handle))
    per_image = {n: sum(1 for r in rows if r["image"] == n) for n in names}
    assert per_image["a"] == direct["a"].max()
    assert [r["image"] for r in rows] == sorted((r["image"] for r in rows), key=names.index)
    assert done.items_total == 5


def test_job_with_a_corrupt_image_fails_naming_it(rig: Rig) -> None:
    folder = rig.root / "bad-images"
    folder.mkdir()
    shutil.copy(DATA / "stardist_tests_img2d_256.tif", folder / "good.tif")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = rig.root / "bad-out"
    with Client(rig.server.address) as client:
        job = client.submit_job("segmentation.segment_images", [str(folder)], str(out), {"shard_size": "1"})
        done = wait_for_job(client, job.id, timeout=120)
        assert done.state == jobs_pb2.JOB_STATE_FAILED
        assert "broken.png" in done.error
        with pytest.raises(InvalidArgument, match=r"params\[flow_threshold\]"):
            client.submit_job("segmentation.segment_images", [str(folder)], str(out), {"flow_threshold": "x"})
    assert not (out / "cells.csv").exists()
    assert not (out / "good.labels.tif").exists()
