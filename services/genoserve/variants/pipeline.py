"""Examples -> model -> sites -> VCF: the calling steps shared by the server, jobs, CLI and training.

``predict`` is any function from a uint8 image batch ``(n, 100, 221, channels)`` to float32
probabilities ``(n, 3)`` (an ONNX Runtime session, the served model, a test double).

``SiteCaller`` turns predicted examples into calls: it holds each candidate site's examples until
all of them are in (``sites.SiteBuffer``; across the requests of a stream), calls the site
(``postprocess.call_site``) and orders the calls. The VariantCalling servicer feeds it request by
request; ``call_examples`` (jobs, training) feeds it a whole set at once. ``write_calls`` writes
calls as a VCF for the jobs and ``genoserve predict variants``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from genoserve.core.errors import InvalidArgument
from genoserve.variants.contract import GENOTYPES
from genoserve.variants.examples import PileupExample
from genoserve.variants.make_examples import Region, make_examples
from genoserve.variants.postprocess import ExampleCall, PostprocessOptions, VariantCall, call_site
from genoserve.variants.sites import SiteBuffer, describe
from genoserve.variants.vcf import write_vcf

Predict = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]
LABELS = GENOTYPES


def check_probabilities(probabilities: npt.NDArray[np.floating[Any]], n: int, field: str = "probabilities") -> None:
    """Probabilities must be finite, in [0, 1], shaped ``(n, 3)``."""
    if probabilities.shape != (n, 3):
        raise InvalidArgument.field(field, f"expected shape [{n}, 3], got {list(probabilities.shape)}")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.max() > 1.0 + 1e-6:
        raise InvalidArgument.field(field, "values must be finite probabilities in [0, 1]")


def to_example_calls(
    examples: Sequence[PileupExample], probabilities: npt.NDArray[np.floating[Any]]
) -> list[ExampleCall]:
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


def with_probabilities(
    examples: Sequence[ExampleCall], probabilities: npt.NDArray[np.floating[Any]]
) -> Sequence[ExampleCall]:
    """``examples`` with row i of ``probabilities`` (float [n, 3]) set on example i, unchecked: a
    probability outside [0, 1] fails that example's site when it is called."""
    for example, p in zip(examples, probabilities.tolist(), strict=True):
        example.probabilities = (p[0], p[1], p[2])
    return examples


@dataclass(frozen=True)
class SiteError:
    """Why examples or a site got no call: the request field and the rule broken."""

    field: str
    message: str


@dataclass
class Called:
    """Calls of the sites completed, each with the ids of its examples, ordered by contig (in the
    order the calls first name them), start and end; and the examples or sites refused."""

    calls: list[tuple[VariantCall, list[str]]] = field(default_factory=list)
    errors: list[SiteError] = field(default_factory=list)


class SiteCaller:
    """Predicted examples in, calls out as each site's examples are all in (one per alt and one
    per alt pair, as DeepVariant makes them), however the examples are split between ``add`` calls."""

    def __init__(self, options: PostprocessOptions | None = None) -> None:
        self.options = options
        self.buffer = SiteBuffer()

    def add(self, ids: Sequence[str], examples: Sequence[ExampleCall]) -> Called:
        """Add examples (probabilities set; ``ids[i]`` names ``examples[i]`` in errors and calls);
        returns the calls of the sites they complete. A refused example or site is an error in the
        result, not an exception: the other sites are still called."""
        out = Called()
        completed: list[list[tuple[str, ExampleCall]]] = []
        for example_id, example in zip(ids, examples, strict=True):
            try:
                completed.extend(self.buffer.add(example_id, example))
            except InvalidArgument as exc:
                out.errors.append(SiteError(exc.violations[0].field, exc.message))
        made = []
        for group in completed:
            try:
                made.append((call_site([e for _, e in group], self.options), [i for i, _ in group]))
            except InvalidArgument as exc:
                out.errors.append(SiteError("examples", exc.message))
        order = {contig: rank for rank, contig in enumerate(dict.fromkeys(c.reference_name for c, _ in made))}
        out.calls = sorted(made, key=lambda m: (order[m[0].reference_name], m[0].start, m[0].end))
        return out

    def incomplete(self) -> list[SiteError]:
        """The sites still waiting for examples, as errors (the buffer is emptied)."""
        return [
            SiteError(
                "examples",
                f"site {describe(key)}: incomplete, has examples {ids}; DeepVariant makes one per alt "
                "and one per alt pair, all needed to call it",
            )
            for key, ids in self.buffer.leftovers()
        ]

    def unfinished(self) -> list[SiteError]:
        """At the end of a stream: the sites still waiting for examples, as errors (the buffer is emptied)."""
        return [
            SiteError("examples", f"site {describe(key)}: stream ended before its examples {ids} were completed")
            for key, ids in self.buffer.leftovers()
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
    """VCF-ready calls for a set of examples, ordered as ``Called.calls``. Every example of each
    site must be present: the first example or site refused raises ``InvalidArgument``."""
    probabilities = predict_examples(examples, predict)
    caller = SiteCaller(options)
    called = caller.add([str(i) for i in range(len(examples))], to_example_calls(examples, probabilities))
    problems = called.errors + caller.incomplete()
    if problems:
        raise InvalidArgument.field(problems[0].field, problems[0].message.removeprefix(f"{problems[0].field}: "))
    return [call for call, _ in called.calls]


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


def write_calls(
    path: str | Path, calls: Sequence[VariantCall], contigs: Sequence[tuple[str, int]], sample: str
) -> Path:
    """``calls`` as a VCF at ``path`` (``vcf.write_vcf``: bgzipped and tabix-indexed for ``.gz``),
    sorted by contig in the order of ``contigs`` ((name, length) for the header; the contigs of
    calls not listed there are added after them without a length), start and end."""
    header = list(contigs)
    named = {name for name, _ in header}
    header += [(name, 0) for name in dict.fromkeys(c.reference_name for c in calls) if name not in named]
    order = {name: i for i, (name, _) in enumerate(header)}
    ordered = sorted(calls, key=lambda c: (order[c.reference_name], c.start, c.end))
    return write_vcf(path, ordered, header, sample)
