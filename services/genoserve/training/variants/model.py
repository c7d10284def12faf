"""A compact residual CNN over DeepVariant-layout pileups -> P(hom-ref), P(het), P(hom-alt).

Input: uint8 ``(batch, 100, 221, channels)`` exactly as make_examples writes it. Inside the graph:
scale to [-1, 1] (DeepVariant's ``x / 127.5 - 1``), keep the 49 columns centred on the candidate,
two strided conv stages with a residual block each, then mean and max over the read rows (order
invariant) per remaining column, and two dense layers. Output: softmax float32 ``(batch, 3)``.
"""

from __future__ import annotations

import torch
from torch import nn

HEIGHT, WIDTH = 100, 221
CROP = 24  # columns kept each side of the centre


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def _stage(cin: int, cout: int, stride: int | tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class PileupCNN(nn.Module):
    def __init__(self, channels: int = 7, width: int = 16) -> None:
        super().__init__()
        self.channels = channels
        self.features = nn.Sequential(
            _stage(channels, width, (2, 1)),  # halve the read rows, keep every column
            _stage(width, 2 * width, 2),
            Residual(2 * width),
            _stage(2 * width, 3 * width, 2),
            Residual(3 * width),
        )
        columns = (2 * CROP + 1 + 1) // 2  # after two stride-2 stages: 49 -> 25 -> 13
        columns = (columns + 1) // 2
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * 3 * width * columns, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(64, 3),
        )

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """``image``: uint8 or float (batch, 100, 221, channels) with pixel values 0..255."""
        centre = WIDTH // 2
        x = image[:, :, centre - CROP : centre + CROP + 1, :].permute(0, 3, 1, 2).float() / 127.5 - 1.0
        h = self.features(x)  # (batch, 3w, rows, columns)
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        out: torch.Tensor = self.head(pooled)
        return out

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(image), dim=-1)
