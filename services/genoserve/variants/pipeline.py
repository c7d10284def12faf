"""Examples -> model -> postprocess: the calling steps shared by the server, jobs, CLI and training.

``predict`` is any function from a uint8 image batch ``(n, 100, 221, channels)`` to float32
probabilities ``(n, 3)`` (an ONNX Runtime session, the served model, a test double).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from genoserve.core.errors import InvalidArgument
from genoserve.variants.examples import PileupExample
from genoserve.variants.make_examples import Region, make_examples
from genoserve.variants.postprocess import ExampleCall, PostprocessOptions, VariantCall, postprocess

Predict = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]
LABELS = ("hom_ref", "het", "hom_alt")


def check_probabilities(probabilities: npt.NDArray[np.floating], n: int, field: str = "probabilities") -> None:
    """Probabilities must be finite, in [0, 1], shaped ``(n, 3)``."""
    if probabilities.shape != (n, 3):
        raise InvalidArgument.field(field, f"expected shape [{n}, 3], got {list(probabilities.shape)}")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.max() > 1.0 + 1e-6:
        raise InvalidArgument.field(field, "values must be finite probabilities in [0, 1]")


def to_example_calls(examples: Sequence[PileupExample], probabilities: npt.NDArray[np.floating]) -> list[ExampleCall]:
    """Pair each example with its model output row."""
    check_probabilities(probabilities, len(examples))
    return [
        ExampleCall(
            reference_name=e.reference_name,
            start=e.start,
            end=e.end,
            reference_bases=e.reference_bases,
            alternate_bases=list(e.alternate_bases),
            alt_allele_indices=e.alt_allele_indices,
            probabilities=(float(p[0]), float(p[1]), float(p[2])),
            call=e.call,
            sample_name=e.sample_name,
        )
        for e, p in zip(examples, probabilities, strict=True)
    ]


def predict_examples(
    examples: Sequence[PileupExample], predict: Predict, batch_size: int = 256
) -> npt.NDArray[np.float32]:
    """Model probabilities ``(n, 3)`` for ``examples`` in batches."""
    if not examples:
        return np.zeros((0, 3), dtype=np.float32)
    outputs = []
    for i in range(0, len(examples), batch_size):
        batch = np.stack([e.image for e in examples[i : i + batch_size]])
        outputs.append(np.asarray(predict(batch), dtype=np.float32))
    return np.concatenate(outputs)


def call_examples(
    examples: Sequence[PileupExample], predict: Predict, options: PostprocessOptions | None = None
) -> list[VariantCall]:
    """VCF-ready calls for a set of examples (all examples of each site must be present)."""
    probabilities = predict_examples(examples, predict)
    return postprocess(to_example_calls(examples, probabilities), options)


def call_region(
    bam: str | Path,
    reference: str | Path,
    region: Region,
    predict: Predict,
    channels: int = 7,
    options: PostprocessOptions | None = None,
) -> tuple[list[VariantCall], int]:
    """Calls for one region of a BAM and the number of candidates examined."""
    candidates, examples = make_examples(bam, reference, region, channels=channels)
    return call_examples(examples, predict, options), len(candidates)
