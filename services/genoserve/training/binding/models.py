"""PyTorch architectures of the binding family.

Every model takes ``x``: float32 ``[batch, length, 4]`` (one-hot, channels A, C, G, T; N = 0.25)
and returns ``logit``: float32 ``[batch, tasks]`` for the strand given. Both strands are scored by
the caller (:func:`strand_max` in training, the server's strand mode when served).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def reverse_complement(x: torch.Tensor) -> torch.Tensor:
    """``[batch, length, 4]`` -> reverse complement (flip length and channel axes)."""
    return x.flip(1, 2)


def strand_max(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """max(f(x), f(rc(x))), one pass over the stacked strands: ``[batch, tasks]``."""
    both = model(torch.cat([x, reverse_complement(x)]))
    forward, reverse = both.chunk(2)
    return torch.maximum(forward, reverse)


class DeepBind(nn.Module):
    """DeepBind (Alipanahi et al. 2015): motif-detector convolution over the sequence padded with
    N (0.25) so edge sites are seen; per filter the global max of its (linear) scores and the mean
    of its rectified scores, concatenated; dropout and a linear output (DeepBind's no-hidden-layer
    variant), one logit.

    The max of a linear filter ranks sites as a PWM scan does, below the binding threshold too;
    the mean of rectified scores counts sites (homotypic clusters), and a filter as wide as a pair
    (30 bp) sees a composite site. The output is linear in these, as binding energy is in the
    simulator's rule.
    """

    DESCRIPTION = (
        "DeepBind: conv 32x30 (N-padded); per filter global max (linear) and mean of ReLU; dropout 0.1; linear 1 logit"
    )

    def __init__(self, filters: int = 32, width: int = 30, dropout: float = 0.1) -> None:
        super().__init__()
        self.width = width
        self.conv = nn.Conv1d(4, filters, width)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * filters, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x.transpose(1, 2), (self.width - 1, self.width - 1), value=0.25)
        h = self.conv(h)  # [batch, filters, positions]
        pooled = torch.cat([h.amax(dim=2), F.relu(h).mean(dim=2)], dim=1)
        logit: torch.Tensor = self.out(self.dropout(pooled))
        return logit


class PwmScan(nn.Module):
    """The PWM baseline: a fixed convolution with the log2-odds matrix (no padding, windows wholly
    inside the sequence) and a max over positions. Output ``[batch, 1]``: the best site's score."""

    weight: torch.Tensor

    def __init__(self, log_odds: np.typing.NDArray[np.float32]) -> None:
        super().__init__()
        weight = torch.from_numpy(np.ascontiguousarray(log_odds.T, dtype=np.float32))[None]  # [1, 4, width]
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x.transpose(1, 2), self.weight).amax(dim=2)


class DilatedResidual(nn.Module):
    """conv(k=3, dilation d) -> batch norm -> ReLU, added to its input (length kept)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + F.relu(self.norm(self.conv(h)))


class DilatedMultitask(nn.Module):
    """DeepSEA/Basenji-style multi-task CNN: a wide conv stem with batch norm, ReLU and max pooling,
    residual blocks with dilation 1, 2, 4, 8 over the pooled positions (about 260 bp receptive
    field), global max and average pooling, dropout, one logit per task."""

    DESCRIPTION = (
        "conv 64x15 + BN + ReLU + maxpool 8, 4 residual dilated convs (64x3, dilation 1,2,4,8) "
        "+ BN + ReLU, global max+mean pool, dropout 0.2, one linear logit per task"
    )

    def __init__(
        self,
        tasks: int,
        channels: int = 64,
        stem_width: int = 15,
        pool: int = 8,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        dropout: float = 0.2,
        prior_logit: float = -1.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(4, channels, stem_width, padding=stem_width // 2),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.MaxPool1d(pool),
        )
        self.blocks = nn.Sequential(*(DilatedResidual(channels, d) for d in dilations))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * channels, tasks)
        nn.init.constant_(self.out.bias, prior_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x.transpose(1, 2)))
        pooled = torch.cat([h.amax(dim=2), h.mean(dim=2)], dim=1)
        logit: torch.Tensor = self.out(self.dropout(pooled))
        return logit


def keep_tasks(model: DilatedMultitask, indices: list[int]) -> DilatedMultitask:
    """A copy of ``model`` whose output layer keeps only the rows of ``indices`` (in that order):
    the kept tasks' logits are exactly the original ones."""
    kept = copy.deepcopy(model)
    out = nn.Linear(model.out.in_features, len(indices))
    with torch.no_grad():
        out.weight.copy_(model.out.weight[indices])
        out.bias.copy_(model.out.bias[indices])
    kept.out = out
    kept.eval()
    return kept
