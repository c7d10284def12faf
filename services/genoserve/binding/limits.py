"""How large one online binding request may be, checked before any sequence is encoded.

The work of a request is the bases the model runs on (one-hot float32 [rows, length, 4], twice
for both strands): every sequence is padded or cropped to the model's input length, so a request
of one-base sequences costs as much as one of full-length ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from genoserve.core.errors import InvalidArgument


@dataclass(frozen=True)
class RequestLimits:
    """``max_sequences``: sequences per Predict, variants per ScoreVariants (setting
    ``binding.max_sequences``); ``max_bases``: rows x model length per request, one strand
    (``binding.max_bases``)."""

    max_sequences: int
    max_bases: int

    def check_predict(self, count: int, length: int, field: str = "sequences") -> None:
        """``count`` sequences for a model of input ``length``."""
        if count > self.max_sequences:
            raise InvalidArgument.field(
                field, f"{count} sequences exceeds binding.max_sequences = {self.max_sequences} per request"
            )
        self._bases(field, count * length, f"{count} sequences x {length} bases (the model's input length)")

    def check_variants(self, count: int, length: int, field: str = "variants") -> None:
        """``count`` variants, each a ref and an alt window of ``length``."""
        if count > self.max_sequences:
            raise InvalidArgument.field(
                field, f"{count} variants exceeds binding.max_sequences = {self.max_sequences} per request"
            )
        self._bases(field, count * 2 * length, f"{count} variants x 2 windows (ref, alt) x {length} bases")

    def check_mutagenesis(self, length: int, field: str = "sequence") -> None:
        """Saturation mutagenesis of one sequence: 1 + 3 x ``length`` rows of ``length``."""
        rows = 1 + 3 * length
        what = f"saturation mutagenesis of the model's {length}-base input runs {rows} sequences x {length} bases"
        self._bases(field, rows * length, what)

    def _bases(self, field: str, bases: int, what: str) -> None:
        if bases > self.max_bases:
            raise InvalidArgument.field(
                field, f"{what} = {bases} bases exceeds binding.max_bases = {self.max_bases} per request"
            )
