"""Grouping examples into candidate sites, and checking pileup layouts against a model.

DeepVariant makes one example per alt allele and one per alt pair; a site can be called once all
of its examples' probabilities are known. ``SiteBuffer`` collects them (for ``pipeline.SiteCaller``:
across the requests of a stream, or a whole set at once) and hands back complete sites.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from genoserve.core.errors import InvalidArgument
from genoserve.variants.checks import alt_set_count, valid_alt_set
from genoserve.variants.examples import CHANNELS_6, CHANNELS_7
from genoserve.variants.postprocess import ExampleCall

SiteKey = tuple[str, int, int, str, tuple[str, ...]]


def site_key(example: ExampleCall) -> SiteKey:
    return (
        example.reference_name,
        example.start,
        example.end,
        example.reference_bases,
        tuple(example.alternate_bases),
    )


def _cut(text: str, most: int = 40) -> str:
    return text if len(text) <= most else f"{text[:most]}..."


def describe(key: SiteKey, most: int = 8) -> str:
    """``chr1:100 A>C,G``, bounded: long names and alleles cut, past ``most`` alts the first ones
    and how many there are."""
    contig, start, _, ref, alts = key
    listed = ",".join(_cut(a) for a in alts[:most]) + (f",... ({len(alts)} alts)" if len(alts) > most else "")
    return f"{_cut(contig)}:{start + 1} {_cut(ref)}>{listed}"


@dataclass
class _Pending:
    examples: list[tuple[str, ExampleCall]] = field(default_factory=list)
    sets: set[tuple[int, ...]] = field(default_factory=set)


@dataclass
class SiteBuffer:
    """Examples by site until each site has every alt-allele set DeepVariant makes.

    Work and memory per example are bounded by the example itself: a site is complete when it
    holds n(n+1)/2 distinct valid alt sets, counted, so the sets of an n-alt site are never listed.
    """

    pending: dict[SiteKey, _Pending] = field(default_factory=dict)

    def add(self, example_id: str, example: ExampleCall) -> list[list[tuple[str, ExampleCall]]]:
        """Add one example; returns the sites it completes (each a list of (id, example))."""
        key = site_key(example)
        indices = example.alt_allele_indices
        n_alts = len(example.alternate_bases)
        if not valid_alt_set(indices, n_alts):
            raise InvalidArgument.field(
                f"examples[{example_id}]",
                f"site {describe(key)}: alt_allele_indices {list(indices)} are not 1 or 2 sorted distinct "
                f"indices into its {n_alts} alts",
            )
        site = self.pending.setdefault(key, _Pending())
        if indices in site.sets:
            raise InvalidArgument.field(
                f"examples[{example_id}]",
                f"site {describe(key)} already has an example for alt_allele_indices {list(indices)}",
            )
        site.sets.add(indices)
        site.examples.append((example_id, example))
        if len(site.sets) == alt_set_count(n_alts):
            del self.pending[key]
            return [site.examples]
        return []

    def leftovers(self) -> list[tuple[SiteKey, list[str]]]:
        """Sites still incomplete, with the ids of the examples they have."""
        out = [(key, [i for i, _ in site.examples]) for key, site in self.pending.items()]
        self.pending.clear()
        return out


def expected_layout(channels: int) -> str:
    names = CHANNELS_7 if channels == 7 else CHANNELS_6
    return f"uint8 [100, 221, {channels}] (rows, columns, channels {', '.join(names)})"


def check_pileup(image: npt.NDArray[np.generic], channels: int | None, field: str) -> None:
    """``image`` must be uint8 [100, 221, 6 or 7] (and ``channels`` wide when given)."""
    ok_channels = (channels,) if channels else (6, 7)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[:2] != (100, 221) or image.shape[2] not in ok_channels:
        want = " or ".join(expected_layout(c) for c in ok_channels)
        raise InvalidArgument.field(field, f"expected {want}; got {image.dtype.name} {list(image.shape)}")


def check_pileups(batch: npt.NDArray[np.generic], count: int, field: str) -> None:
    """``batch`` must be uint8 [count, 100, 221, 6 or 7] (one pileup per example)."""
    if (
        batch.dtype != np.uint8
        or batch.ndim != 4
        or batch.shape[0] != count
        or batch.shape[1:3] != (100, 221)
        or batch.shape[3] not in (6, 7)
    ):
        raise InvalidArgument.field(
            field,
            f"expected uint8 [{count}, 100, 221, 6 or 7] (examples, rows, columns, channels "
            f"{', '.join(CHANNELS_6)}, then insert_size for 7) "
            f"(one pileup per example); got {batch.dtype.name} {list(batch.shape)}",
        )
