"""Write a small PyTorch binding model as a torch.export program: the input of
``genoserve models import torch`` in the README's "Serve your own model".

Run from the repository root (a few seconds)::

    python examples/export_cnn.py                     # writes out/ctcf_cnn.pt2

The model has the shape of a DeepBind network: one-hot DNA float32 [batch, 101, 4] (columns A, C,
G, T) -> a convolution -> max over positions -> logit float32 [batch, 1]. Instead of training it,
its one filter is the JASPAR CTCF matrix (MA0139.2) as log2-odds, so that its scores mean
something: windows holding a CTCF site score near 1 (the edited records of examples/sequences.fa),
the others near 0. Any module with that input and output imports the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from genoserve.training.binding.motifs import load_motifs

LENGTH = 101


class MotifCNN(torch.nn.Module):
    def __init__(self, log_odds: torch.Tensor, threshold: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 1, kernel_size=log_odds.shape[0])
        with torch.no_grad():
            self.conv.weight.copy_(log_odds.T[None])  # [1, 4, width]
            self.conv.bias.fill_(-threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, 101, 4] -> [batch, 1]
        return self.conv(x.transpose(1, 2)).amax(dim=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("out/ctcf_cnn.pt2"))
    args = parser.parse_args()
    ctcf = load_motifs()["CTCF"]
    model = MotifCNN(torch.from_numpy(ctcf.log_odds()), threshold=0.6 * ctcf.max_score).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.zeros(2, LENGTH, 4),), dynamic_shapes=({0: batch},))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(args.output))
    print(f"saved {args.output}: one-hot DNA [batch, {LENGTH}, 4] -> CTCF logit [batch, 1]")


if __name__ == "__main__":
    main()
