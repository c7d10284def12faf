"""Motif recovery by in-silico mutagenesis: does a model's map match the JASPAR matrix? (no torch)

For each positive of a :func:`.benchmark.single_site_set`, the Mutagenesis RPC's map is computed
with the server's own functions (:mod:`genoserve.binding.mutagenesis`: every substitution in one
batch, logit deltas ``[length, 4]``; both strands combined by the model's default strand mode).
The maps are cut around the planted site with ``pad`` bp on each side, turned to the site's
strand, and averaged. The average is read as base probabilities (softmax per position,
:func:`genoserve.cli.logo.probabilities`) and their information content compared with the JASPAR
matrix's: the Pearson correlation of the per-position IC at the offset where it is largest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from genoserve.binding.mutagenesis import deltas, saturation_batch
from genoserve.cli.logo import information_content, probabilities
from genoserve.training.binding.evaluate import strand_logits
from genoserve.training.binding.motifs import Motif
from genoserve.training.binding.simulate import SimulatedSet

Array = np.ndarray[Any, Any]

PAD = 5


def mean_map(
    session: ort.InferenceSession, data: SimulatedSet, motif: str, task: int = 0, strand: str = "max",
    pad: int = PAD, limit: int = 100,
) -> Array:  # fmt: skip
    """float64 ``[width + 2 pad, 4]``: the mean logit-delta map around the first site of ``motif``
    in each positive (at most ``limit``; sites too near an edge skipped), on the site's strand."""
    x = data.one_hot()
    maps = []
    for i in np.flatnonzero(data.labels[:, task] == 1):
        site = next((s for s in data.sites[i] if s.motif == motif), None)
        if site is None or site.start - pad < 0 or site.end + pad > x.shape[1]:
            continue
        batch, positions, bases = saturation_batch(x[i])
        values = strand_logits(session, batch, strand=strand)
        window = deltas(values, positions, bases, x.shape[1])[site.start - pad : site.end + pad, :, task]
        maps.append(window if site.strand == 1 else window[::-1, ::-1])
        if len(maps) == limit:
            break
    if not maps:
        raise ValueError(f"no positive holds a {motif} site away from the edges")
    return np.asarray(np.mean(maps, axis=0), dtype=np.float64)


def ic_pearson(ism: Array, motif: Motif) -> tuple[float, int]:
    """(Pearson r of the map's and the matrix's IC per position at the best offset, that offset)."""
    observed = information_content(probabilities(ism))
    expected = motif.information_content()
    best = (-1.0, 0)
    for offset in range(observed.size - expected.size + 1):
        r = float(np.corrcoef(observed[offset : offset + expected.size], expected)[0, 1])
        if r > best[0]:
            best = (r, offset)
    return best
