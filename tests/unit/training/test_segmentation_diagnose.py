"""The diagnosis' error classes on hand-made masks, and its flip averaging on a known network."""

from __future__ import annotations

import numpy as np

from genoserve.training.segmentation.diagnose import (
    Case,
    ap,
    ap50_ignoring_faint,
    classify,
    contrast_to_noise,
    network_output,
)


def test_classify_names_each_kind_of_error() -> None:
    true = np.zeros((64, 96), np.int32)
    pred = np.zeros_like(true)
    true[0:10, 0:10], true[0:10, 10:20], true[0:10, 20:30] = 1, 2, 3  # three touching cells...
    pred[0:10, 0:30] = 1  # ...in one predicted mask: merged
    true[30:35, 30:35] = 4  # no prediction: missed
    true[30:40, 50:60] = 5  # in three pieces: split
    pred[30:34, 50:60], pred[34:37, 50:60], pred[37:40, 50:60] = 2, 3, 4
    true[50:60, 0:10] = 6  # shifted by 4 px: IoU 60 / 140, boundary
    pred[54:64, 0:10] = 5
    pred[50:55, 80:85] = 6  # on background: fp_empty
    true[50:60, 40:50], pred[50:60, 40:50] = 7, 7  # found
    image = (true > 0).astype(np.float32)

    counts, records = classify(true, pred, image)

    assert counts["true"] == 7
    assert counts["tp"] == 1
    assert (counts["merged"], counts["missed"], counts["split"], counts["boundary"]) == (3, 1, 1, 1)
    assert counts["fp_empty"] == 1
    assert counts["fp_part"] == 5  # the merge, the 3 pieces, the shifted mask
    missed = [r for r in records if r["kind"] == "missed"]
    assert missed == [{"kind": "missed", "area": 25, "tiny": True, "relative_brightness": 1.0,
                       "touching": False, "border": False, "best_iou": 0.0}]  # fmt: skip
    assert all(r["touching"] for r in records if r["kind"] == "merged")


def test_flip_averaging_undoes_the_flips_and_the_flow_signs() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((40, 56)).astype(np.float32) * 100

    def forward(batch: np.ndarray) -> np.ndarray:
        # An equivariant "network": flows are the image gradient, the logit the image itself.
        x = batch[:, 0]
        return np.stack([np.gradient(x, axis=1), np.gradient(x, axis=2), x], axis=1)

    plain = network_output(forward, image, 64, 0.1)
    flipped = network_output(forward, image, 64, 0.1, flips=True)
    # Zero padding to the 64 px tile breaks the symmetry only near the padded edges.
    np.testing.assert_allclose(flipped[:, 1:-1, 1:-1], plain[:, 1:-1, 1:-1], atol=1e-5)


def test_contrast_to_noise_is_the_step_over_the_pixel_noise() -> None:
    rng = np.random.default_rng(1)
    true = np.zeros((64, 64), np.int32)
    true[20:30, 20:30] = 1
    true[40:44, 40:44] = 2
    image = 100 + rng.normal(0, 2.0, true.shape)
    image[true == 1] += 20.0  # 10 noise sd
    image[true == 2] += 4.0  # 2 noise sd

    labels, areas, ratios = contrast_to_noise(true, image)

    assert labels.tolist() == [1, 2]
    assert areas.tolist() == [100, 16]
    # The blur-subtracted noise estimate is a little under the pixel sd (the blur keeps some noise).
    assert 9.0 < ratios[0] < 13.0
    assert 1.5 < ratios[1] < 3.0


def test_ap_ignoring_faint_masks_neither_rewards_nor_punishes_them() -> None:
    rng = np.random.default_rng(2)
    true = np.zeros((64, 64), np.int32)
    true[5:15, 5:15], true[5:15, 30:40], true[40:50, 5:15], true[40:50, 40:50] = 1, 2, 3, 4
    image = 100 + rng.normal(0, 2.0, true.shape)
    image[(true == 1) | (true == 2) | (true == 3)] += 30.0  # clearly visible
    image[true == 4] += 1.0  # half a noise sd: "faint"
    pred = np.where((true == 1) | (true == 2), true, 0).astype(np.int32)  # 3 is missed...
    pred[55:60, 25:30] = 5  # ...and one false positive on background
    cases = [Case("x", image.astype(np.float32), true)]
    # Counting every mask: 2 TP, 1 FP, 2 FN (3 and 4).
    assert ap([(true, pred)])[0.5] == 2 / 5
    score, ignored = ap50_ignoring_faint(cases, [pred])
    assert ignored == 1
    assert score == 2 / 4  # the faint 4 is no FN
    found = pred.copy()
    found[true == 4] = 6  # finding the faint one is no TP either
    assert ap50_ignoring_faint(cases, [found]) == (2 / 4, 1)
