"""A compact U-Net: normalised image [B, C, H, W] -> [B, 3, H, W] = (dY, dX, cellprob logit).

Four levels (widths ``WIDTHS``), two 3x3 conv + BatchNorm + ReLU per level (with ``residual``,
as Cellpose: the two convs get a shortcut, identity or 1x1 conv, added before the last ReLU),
max-pool down, nearest upsampling + skip concatenation up. H and W must be multiples of 8. The network is
trained on flows scaled by ``FLOW_SCALE`` (as Cellpose trains on 5x flows); the exported graph
divides them back, so the served outputs are unit-length flows.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (24, 48, 96, 192)
#: Residual blocks (two convs with a shortcut, as Cellpose's) instead of plain double convs.
RESIDUAL = True
FLOW_SCALE = 5.0


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class _Residual(nn.Module):
    """Two 3x3 conv + BatchNorm with an identity (or 1x1 conv) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.skip: nn.Module = (
            nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class UNet(nn.Module):
    def __init__(self, channels: int = 1, widths: tuple[int, ...] = WIDTHS, residual: bool = RESIDUAL) -> None:
        super().__init__()
        block = _Residual if residual else _block
        self.down = nn.ModuleList()
        cin = channels
        for w in widths:
            self.down.append(block(cin, w))
            cin = w
        self.up = nn.ModuleList(block(widths[i] + widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
        for block in self.up:
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([skips.pop(), x], dim=1))
        out: torch.Tensor = self.head(x)
        return out


class Exported(nn.Module):
    """The served graph: unit flows and the raw cell-probability logit."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return torch.cat([y[:, :2] / FLOW_SCALE, y[:, 2:]], dim=1)
