"""Job kinds: how a kind's inputs are planned into shards, run, and merged.

Each family registers its kinds here; the platform's own kind is ``platform.score_rows``.
"""

from __future__ import annotations

from typing import Any

from genoserve.core.errors import InvalidArgument
from genoserve.jobs.kinds.base import JobKind
from genoserve.jobs.kinds.binding import ScoreBed, ScoreFasta
from genoserve.jobs.kinds.binding_vcf import ScoreVcf
from genoserve.jobs.kinds.embedding import EmbedH5ad
from genoserve.jobs.kinds.score_rows import ScoreRows
from genoserve.jobs.kinds.segmentation import SegmentImages
from genoserve.jobs.kinds.variants import CallBam, CallExamples

KINDS: dict[str, JobKind[Any]] = {
    kind.name: kind
    for kind in (
        ScoreRows(),
        ScoreFasta(),
        ScoreBed(),
        ScoreVcf(),
        CallBam(),
        CallExamples(),
        SegmentImages(),
        EmbedH5ad(),
    )
}


def get_kind(name: str) -> JobKind[Any]:
    kind = KINDS.get(name)
    if kind is None:
        raise InvalidArgument.field("kind", f"unknown job kind {name!r}; known kinds: {sorted(KINDS)}")
    return kind


__all__ = ["KINDS", "JobKind", "get_kind"]
