"""Sequence logos of in-silico mutagenesis maps (numpy; matplotlib draws the letters).

A map holds, per position and base, the logit change when that base is written there (0 at the
sequence's own base). Read as a log-linear model of binding, the probability of base ``b`` at a
position is the softmax of those logits over the four bases; the logo stacks each base at height
``p * IC`` (bits), IC = 2 + sum p log2 p, as in a JASPAR logo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

ALPHABET = "ACGT"
#: The usual nucleotide logo colours (A green, C blue, G orange, T red).
COLOURS = {"A": "#109648", "C": "#255C99", "G": "#F7B32B", "T": "#D62839"}


def probabilities(deltas: Array) -> Array:
    """Logit changes float ``[length, 4]`` -> base probabilities ``[length, 4]`` (softmax per position)."""
    shifted = np.asarray(deltas, dtype=np.float64)
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return np.asarray(weights / weights.sum(axis=1, keepdims=True))


def information_content(p: Array) -> Array:
    """Bits per position ``[length]`` of base probabilities ``[length, 4]``."""
    p = np.asarray(p, dtype=np.float64)
    safe = np.where(p > 0, p, 1.0)
    return np.asarray(2.0 + (p * np.log2(safe)).sum(axis=1))


def draw(deltas: Array, path: Path, title: str = "") -> None:
    """Write a PNG logo of a map ``[length, 4]`` (A, C, G, T): letters stacked by ``p * IC``,
    tallest on top, drawn as matplotlib text paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    p = probabilities(deltas)
    heights = p * information_content(p)[:, None]
    font = FontProperties(family="DejaVu Sans", weight="bold")
    figure, axes = plt.subplots(figsize=(min(max(4.0, 0.35 * p.shape[0]), 14.0), 2.2), dpi=120)
    for position, column in enumerate(heights):
        bottom = 0.0
        for b in np.argsort(column, kind="stable"):
            height = float(column[b])
            if height <= 1e-3:
                continue
            glyph = TextPath((0, 0), ALPHABET[b], size=1, prop=font)
            box = glyph.get_extents()
            scale = Affine2D().translate(-box.x0, -box.y0).scale(0.9 / box.width, height / box.height)
            placed = scale.translate(position + 0.05, bottom).transform_path(glyph)
            axes.add_patch(PathPatch(placed, facecolor=COLOURS[ALPHABET[b]], edgecolor="none"))
            bottom += height
    axes.set_xlim(0, p.shape[0])
    axes.set_ylim(0, 2)
    axes.set_ylabel("bits")
    step = max(1, p.shape[0] // 25)
    axes.set_xticks(np.arange(0, p.shape[0], step) + 0.5, [str(i + 1) for i in range(0, p.shape[0], step)], fontsize=6)
    axes.spines[["top", "right"]].set_visible(False)
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def mutagenesis_tsv(client: Any, model: str, items: Any, strand: str, crop: bool, logo: Path | None,
                    call: Any) -> int:  # fmt: skip
    """``predict binding --mutagenesis``: one Mutagenesis request per (id, bases) of ``items``, TSV
    rows (id, position 1-based, base, task, logit change for A, C, G, T) to stdout; with ``logo``,
    a PNG of the first task's map averaged over the sequences (which should be aligned on the
    site). ``call`` runs a request as the CLI does (``or_exit``). Returns the sequences done."""
    import click

    from genoserve.api.codecs.tensor import to_numpy

    total: Array | None = None
    count = 0
    tasks: list[str] = []
    for sequence_id, bases in items:
        response = call(lambda i=sequence_id, b=bases: client.mutagenesis(model, i, b, strand, crop))
        deltas = to_numpy(response.logit_deltas, "logit_deltas")  # [length, 4, tasks]
        if not count:
            tasks = list(response.tasks)
            click.echo("\t".join(["id", "position", "base", "task", *ALPHABET]))
        for position, base in enumerate(response.bases):
            for t, task in enumerate(tasks):
                values = [f"{v:.6g}" for v in deltas[position, :, t]]
                click.echo("\t".join([response.id, str(position + 1), base, task, *values]))
        total = deltas[:, :, 0].astype(np.float64) if total is None else total + deltas[:, :, 0]
        count += 1
    if logo is not None and total is not None:
        draw(total / count, logo, f"{model}: {tasks[0]}, in-silico mutagenesis of {count} sequence(s)")
    return count
