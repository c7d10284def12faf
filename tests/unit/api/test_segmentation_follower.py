"""Which flow follower the Segmentation servicer uses for each setting."""

import onnxruntime as ort

from genoserve.api.servicers.segmentation import follower
from genoserve.core.settings import RuntimeSettings, SegmentationSettings
from genoserve.segmentation.follow_graph import OnnxFollower


def test_auto_picks_the_graph_only_with_cuda() -> None:
    chosen = follower(SegmentationSettings(), RuntimeSettings())
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert isinstance(chosen, OnnxFollower)
    else:
        assert chosen is None


def test_explicit_choices() -> None:
    assert follower(SegmentationSettings(reconstruction="numpy"), RuntimeSettings()) is None
    graph = follower(SegmentationSettings(reconstruction="onnx"), RuntimeSettings(device="cpu"))
    assert isinstance(graph, OnnxFollower)
    assert follower(SegmentationSettings(reconstruction="auto"), RuntimeSettings(device="cpu")) is None
