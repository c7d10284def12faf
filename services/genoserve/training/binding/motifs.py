"""JASPAR position frequency matrices: the committed copy, sampling and the log-odds PWM (pure numpy).

The matrices live in ``jaspar_motifs.json`` next to this module, so the simulator, training and
tests need no database. That file is written by :func:`fetch_from_jaspar` (pyjaspar, train-time
only)::

    python -m genoserve.training.binding.motifs          # rewrites jaspar_motifs.json

Matrices are ``[width, 4]`` with columns A, C, G, T, on the strand JASPAR publishes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from genoserve.training.binding.onehot import ALPHABET, decode

Array = np.ndarray[Any, Any]

MOTIFS_JSON = Path(__file__).with_name("jaspar_motifs.json")
JASPAR_RELEASE = "JASPAR2026"
#: Our name -> JASPAR matrix id. The first ten are the multitask model's tasks (in this order);
#: TAL1::TCF3 is only GATA1's grammar partner. GATA1 uses MA0035.3 (the canonical WGATAA site);
#: YY1 uses the human MA0095.2 (AAnATGGCG) rather than the newer mouse matrix.
MATRIX_IDS: dict[str, str] = {
    "CTCF": "MA0139.2",
    "GATA1": "MA0035.3",
    "SPI1": "MA0080.7",
    "CEBPA": "MA0102.5",
    "FOXA1": "MA0148.5",
    "HNF4A": "MA0114.5",
    "REST": "MA0138.3",
    "MAX": "MA0058.4",
    "YY1": "MA0095.2",
    "NRF1": "MA0506.3",
    "TAL1::TCF3": "MA0091.2",
}
#: Pseudo-frequency added to every base before the log-odds (then renormalised).
PSEUDO_FREQUENCY = 0.01
BACKGROUND = 0.25


@dataclass(frozen=True)
class Motif:
    """One JASPAR matrix. ``counts``: float64 ``[width, 4]`` (A, C, G, T), as published."""

    name: str
    matrix_id: str
    counts: Array

    @property
    def width(self) -> int:
        return int(self.counts.shape[0])

    @cached_property
    def frequencies(self) -> Array:
        """float64 ``[width, 4]``, each row summing to 1."""
        return np.asarray(self.counts / self.counts.sum(axis=1, keepdims=True), dtype=np.float64)

    @cached_property
    def _cumulative(self) -> Array:
        return np.cumsum(self.frequencies, axis=1)[:, :3]

    @property
    def consensus(self) -> str:
        return decode(self.frequencies.argmax(axis=1).astype(np.uint8))

    def log_odds(self) -> Array:
        """float32 ``[width, 4]``: log2(p / 0.25), p the frequencies with :data:`PSEUDO_FREQUENCY`."""
        p = (self.frequencies + PSEUDO_FREQUENCY) / (1.0 + 4 * PSEUDO_FREQUENCY)
        return np.log2(p / BACKGROUND).astype(np.float32)

    def sample(self, rng: np.random.Generator) -> Array:
        """One instance drawn position by position from the frequencies: uint8 codes ``[width]``."""
        u = rng.random(self.width)
        codes: Array = (u[:, None] >= self._cumulative).sum(axis=1).astype(np.uint8)
        return codes

    def sample_many(self, rng: np.random.Generator, n: int, uniform: Array | float = 0.0) -> Array:
        """``n`` instances, uint8 codes ``[n, width]``; row i drawn from the frequencies mixed with
        the uniform distribution at weight ``uniform[i]`` (0: the matrix itself; 1: random bases)."""
        weight = np.broadcast_to(np.asarray(uniform, dtype=np.float64), (n,))
        mixed = (1.0 - weight[:, None, None]) * self.frequencies[None] + weight[:, None, None] / 4.0
        cumulative = np.cumsum(mixed, axis=2)[:, :, :3]
        u = rng.random((n, self.width))
        return np.asarray((u[:, :, None] >= cumulative).sum(axis=2), dtype=np.uint8)

    def column_shuffled(self, rng: np.random.Generator) -> Motif:
        """The same columns in a random order: a decoy with the motif's base composition and
        information content but not its site."""
        order = rng.permutation(self.width)
        return Motif(f"{self.name}-shuffled", self.matrix_id, self.counts[order])

    def information_content(self) -> Array:
        """float64 ``[width]``: bits per position, 2 + sum p log2 p."""
        p = self.frequencies
        return np.asarray(2.0 + np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1))

    def score(self, codes: Array) -> Array:
        """PWM log-odds (bits) of instances read on their own strand: codes ``[..., width]`` -> ``[...]``."""
        return np.asarray(self.log_odds()[np.arange(self.width), codes].sum(axis=-1), dtype=np.float64)

    def instance_score_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of :meth:`score` over instances drawn by :meth:`sample`
        (exact: positions are independent)."""
        f, lo = self.frequencies, self.log_odds().astype(np.float64)
        mean = (f * lo).sum(axis=1)
        var = (f * lo * lo).sum(axis=1) - mean**2
        return float(mean.sum()), float(np.sqrt(var.sum()))

    @property
    def max_score(self) -> float:
        return float(self.log_odds().max(axis=1).sum())


def load_motifs(path: Path = MOTIFS_JSON) -> dict[str, Motif]:
    """The committed matrices by our name, in file order."""
    document = json.loads(path.read_text())
    return {
        m["name"]: Motif(m["name"], m["matrix_id"], np.asarray(m["counts"], dtype=np.float64))
        for m in document["motifs"]
    }


def max_log_odds(x: Array, log_odds: Array) -> Array:
    """The PWM scan on the given strand: max over positions of the window's log-odds sum.

    x: float32 ``[batch, length, 4]`` one-hot; log_odds: ``[width, 4]``. Returns float32 ``[batch]``.
    Windows must lie wholly inside the sequence (no padding), as in the exported PWM model.
    """
    width = log_odds.shape[0]
    positions = x.shape[1] - width + 1
    total = np.zeros((x.shape[0], positions), dtype=np.float32)
    for k in range(width):
        total += x[:, k : k + positions, :] @ log_odds[k]
    return np.asarray(total.max(axis=1), dtype=np.float32)


def fetch_from_jaspar(matrix_ids: Mapping[str, str] = MATRIX_IDS, release: str = JASPAR_RELEASE) -> dict[str, Any]:
    """The JSON document for ``jaspar_motifs.json``, read from pyjaspar's bundled database."""
    import pyjaspar  # type: ignore[import-untyped]  # train-time only

    database = pyjaspar.jaspardb(release=release)
    motifs = []
    for name, matrix_id in matrix_ids.items():
        record = database.fetch_motif_by_id(matrix_id)
        if record is None:
            raise LookupError(f"{matrix_id} ({name}) is not in {release}")
        counts = [[float(record.counts[base][i]) for base in ALPHABET] for i in range(record.length)]
        motifs.append(
            {
                "name": name,
                "matrix_id": matrix_id,
                "jaspar_name": record.name,
                "species": ",".join(record.species or []),
                "consensus": str(record.consensus),
                "counts": counts,
            }
        )
    return {
        "source": f"{release} CORE via pyjaspar {pyjaspar.__version__}; counts as published, "
        "rows are positions, columns A, C, G, T",
        "motifs": motifs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the JASPAR matrices used by the binding simulator.")
    parser.add_argument("--out", type=Path, default=MOTIFS_JSON)
    parser.add_argument("--release", default=JASPAR_RELEASE)
    args = parser.parse_args(argv)
    document = fetch_from_jaspar(release=args.release)
    lines = [json.dumps({k: v for k, v in document.items() if k != "motifs"})[:-1] + ', "motifs": [']
    lines += [
        "  " + json.dumps(m) + ("," if i < len(document["motifs"]) - 1 else "")
        for i, m in enumerate(document["motifs"])
    ]
    args.out.write_text("\n".join([*lines, "]}"]) + "\n")
    print(f"wrote {args.out} ({len(document['motifs'])} matrices from {args.release})")


if __name__ == "__main__":
    main()
