"""Masks -> flows -> masks, and the steps of mask reconstruction on their own."""

from typing import Any

import numpy as np
import pytest

from genoserve.segmentation import dynamics, flows, metrics

Array = np.ndarray[Any, Any]


def disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> Array:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.asarray((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)


def same_partition(a: Array, b: Array) -> bool:
    """Equal up to renaming the labels."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_flows_point_to_the_centre_of_a_disk() -> None:
    masks = disk((41, 41), 20, 20, 12).astype(np.int32)
    f = flows.masks_to_flows(masks)
    assert f.shape == (2, 41, 41)
    assert f.dtype == np.float32
    assert np.all(f[:, masks == 0] == 0)
    norms = np.sqrt((f[:, masks > 0] ** 2).sum(axis=0))
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)
    # Left of the centre flows point right (+x), above the centre they point down (+y).
    assert f[1, 20, 12] > 0.9
    assert f[1, 20, 28] < -0.9
    assert f[0, 12, 20] > 0.9
    assert f[0, 28, 20] < -0.9


def test_centre_is_inside_a_crescent() -> None:
    crescent = disk((40, 40), 20, 20, 15) & ~disk((40, 40), 20, 27, 12)
    labels, cy, cx = flows.centers(crescent.astype(np.int32))
    assert list(labels) == [1]
    assert crescent[cy[0], cx[0]]


def test_real_masks_round_trip_exactly(real_masks: Array) -> None:
    f = flows.masks_to_flows(real_masks)
    cellprob = np.where(real_masks > 0, 4.0, -4.0).astype(np.float32)
    recovered = dynamics.compute_masks(f, cellprob)
    assert recovered.max() == 65
    assert same_partition(recovered, real_masks)
    assert metrics.average_precision(real_masks, recovered)[0.9][0] == 1.0


def test_touching_cells_stay_apart() -> None:
    masks = np.zeros((60, 60), np.int32)
    masks[disk((60, 60), 30, 18, 11)] = 1
    masks[disk((60, 60), 30, 40, 11) & (masks == 0)] = 2
    out = dynamics.compute_masks(flows.masks_to_flows(masks), np.where(masks > 0, 1.0, -1.0).astype(np.float32))
    assert out.max() == 2
    assert same_partition(out, masks)


def test_cellprob_threshold_and_min_size() -> None:
    masks = np.zeros((64, 64), np.int32)
    masks[disk((64, 64), 20, 20, 8)] = 1
    # 29 pixels: under a min_size of 30. (A cell under ~15 pixels gets no seed at all, as in
    # Cellpose: a seed needs more than 10 end points in one histogram bin.)
    masks[disk((64, 64), 50, 50, 3)] = 2
    f = flows.masks_to_flows(masks)
    prob = np.where(masks == 1, 2.0, np.where(masks == 2, 2.0, -2.0)).astype(np.float32)
    out = dynamics.compute_masks(f, prob, dynamics.MaskParams(flow_threshold=0, min_size=30))
    assert out.max() == 1
    assert (out > 0).sum() == (masks == 1).sum()
    kept = dynamics.compute_masks(f, prob, dynamics.MaskParams(flow_threshold=0, min_size=0))
    assert kept.max() == 2
    assert dynamics.compute_masks(f, prob, dynamics.MaskParams(cellprob_threshold=3.0)).max() == 0


def test_flow_error_check_drops_a_mask_with_wrong_flows() -> None:
    masks = np.zeros((64, 64), np.int32)
    masks[disk((64, 64), 20, 20, 9)] = 1
    masks[disk((64, 64), 44, 44, 9)] = 2
    f = flows.check_flows(masks).astype(np.float32)
    # Cell 2's flows all point the same way: its pixels pile up at its edge, not in a sink
    # matching the diffusion flows of the mask that forms there.
    errors = dynamics.flow_errors(masks, f)
    assert errors[1] < 1e-6
    assert errors[2] < 1e-6
    # The training targets (median centre, log heat) are near the check's flows, not equal.
    assert 1e-6 < dynamics.flow_errors(masks, flows.masks_to_flows(masks))[1:].max() < 0.02
    bad = f.copy()
    bad[:, masks == 2] = np.array([[0.6], [0.8]], dtype=np.float32)
    assert dynamics.flow_errors(masks, bad)[2] > 0.4
    assert dynamics.remove_bad_flows(masks, bad, 0.4).max() == 1
    assert dynamics.remove_bad_flows(masks, bad, 0.0).max() == 2


def test_fill_holes_only_inside_one_mask() -> None:
    masks = np.zeros((30, 60), np.int32)
    masks[5:20, 5:20] = 1
    masks[10:13, 10:13] = 0  # a hole in mask 1
    masks[5:20, 30:38] = 2
    masks[5:20, 38:46] = 3
    masks[10:13, 36:40] = 0  # a hole between masks 2 and 3: not filled
    filled = dynamics.fill_holes(masks)
    assert (filled[10:13, 10:13] == 1).all()
    assert (filled[10:13, 36:40] == 0).all()


def test_renumber_is_consecutive_in_raster_order() -> None:
    masks = np.zeros((10, 10), np.int32)
    masks[0:3, 5:8] = 9
    masks[5:9, 0:4] = 4
    masks[9, 9] = 7
    out = dynamics.renumber(masks, min_size=2)
    assert out[0, 5] == 1
    assert out[5, 0] == 2
    assert out[9, 9] == 0
    assert out.max() == 2


def test_large_masks_are_dropped() -> None:
    masks = np.ones((20, 20), np.int32)
    assert dynamics.remove_large(masks, 0.4).max() == 0


def test_follow_flows_converges_to_a_sink() -> None:
    yy, xx = np.mgrid[:32, :32].astype(np.float32)
    field = np.stack([10 - yy, 20 - xx])
    field /= np.maximum(np.sqrt((field**2).sum(0)), 1e-6)
    ys, xs = np.nonzero(np.ones((32, 32), bool))
    ends = dynamics.follow_flows(field.astype(np.float32), ys, xs, 100)
    assert np.abs(ends[0] - 10).max() <= 1.0
    assert np.abs(ends[1] - 20).max() <= 1.0


def test_empty_probability_gives_no_cells() -> None:
    out = dynamics.compute_masks(np.zeros((2, 16, 16), np.float32), np.full((16, 16), -5, np.float32))
    assert out.shape == (16, 16)
    assert out.max() == 0


@pytest.mark.parametrize("niter", [None, 5])
def test_flows_on_empty_masks_are_zero(niter: int | None) -> None:
    assert not flows.masks_to_flows(np.zeros((8, 8), np.int32), niter).any()


def test_end_point_clusters_become_one_mask_each() -> None:
    """Pixels ending in one tight cluster share a label; a plateau of two equal peaks is one
    seed; a cluster of too few end points (<= 10) seeds nothing."""
    ys = np.arange(40)
    xs = np.zeros(40, dtype=np.int64)
    ends = np.zeros((2, 40), np.float32)
    ends[:, :15] = [[5.0], [5.0]]  # cluster A: 15 points in one bin
    ends[:, 15:21] = [[5.0], [6.0]]  # 6 points right beside A: grown into A
    ends[:, 21:33] = [[30.0], [30.0]]  # cluster B: two equal peaks side by side ...
    ends[:, 33:] = [[30.0], [31.0]]  # ... (12 and 7 points; only the 12 is a peak)
    masks = dynamics.masks_from_endpoints(ends, ys, xs, (40, 40))
    a, b = masks[ys[:21], 0], masks[ys[21:], 0]
    assert len(set(a.tolist())) == 1
    assert len(set(b.tolist())) == 1
    assert a[0] != b[0]
    assert a[0] > 0
    plateau = np.zeros((2, 24), np.float32)
    plateau[:, :12] = [[10.0], [10.0]]
    plateau[:, 12:] = [[10.0], [11.0]]
    one = dynamics.masks_from_endpoints(plateau, np.arange(24), np.zeros(24, np.int64), (30, 30))
    assert set(one[:24, 0].tolist()) == {1}
    few = dynamics.masks_from_endpoints(plateau[:, :8], np.arange(8), np.zeros(8, np.int64), (30, 30))
    assert not few.any()


def test_check_flows_are_cellpose_3s_flow_error_flows() -> None:
    """``flows.check_flows`` is cellpose 3.1's ``masks_to_flows_cpu`` (what its flow-error check
    recomputes on the CPU) to the bit: cells of several sizes and shapes, touching, labels with gaps."""
    cellpose_dynamics = pytest.importorskip("cellpose.dynamics", reason="needs the import extra (cellpose 3)")
    masks = np.zeros((96, 120), np.int32)
    masks[disk((96, 120), 20, 20, 9)] = 3
    masks[disk((96, 120), 30, 34, 8)] = 7  # touches 3
    masks[50:90, 10:14] = 4  # thin, long
    masks[60:80, 60:110] = 12
    masks[62:70, 70:80] = 0  # a hole
    masks[5:8, 100:103] = 1  # tiny
    np.testing.assert_array_equal(flows.check_flows(masks), cellpose_dynamics.masks_to_flows_cpu(masks)[0])
