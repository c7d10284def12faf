"""The flow-following ONNX graph: committed bytes are reproducible and it follows flows as numpy does."""

from typing import Any

import numpy as np

from genoserve.core.settings import RuntimeSettings
from genoserve.runtime.session import OrtSession
from genoserve.segmentation import dynamics, flows, follow_graph, metrics

Array = np.ndarray[Any, Any]


def test_committed_graph_is_what_build_makes() -> None:
    assert follow_graph.GRAPH_PATH.read_bytes() == follow_graph.build()


def test_onnx_follower_matches_numpy(real_masks: Array) -> None:
    session = OrtSession(follow_graph.GRAPH_PATH, RuntimeSettings(device="cpu", intra_op_threads=1))
    follower = follow_graph.OnnxFollower(session)
    f = flows.masks_to_flows(real_masks)
    ys, xs = np.nonzero(real_masks)
    ends = follower(f, ys, xs, 200)
    np.testing.assert_allclose(ends, dynamics.follow_flows(f, ys, xs, 200), atol=1e-3)
    prob = np.where(real_masks > 0, 3.0, -3.0).astype(np.float32)
    masks = dynamics.compute_masks(f, prob, follow=follower)
    assert metrics.average_precision(real_masks, masks)[0.9][0] == 1.0
    # Degenerate shapes go to numpy.
    assert follower(np.zeros((2, 1, 5), np.float32), np.array([0]), np.array([2]), 5).shape == (2, 1)
