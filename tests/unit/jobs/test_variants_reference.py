"""``variants.call_bam``'s ``reference`` param: a registered name or a FASTA path, and a clear error otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import Settings
from genoserve.jobs.kinds.variants import resolve_reference

REF = Path(__file__).resolve().parents[2] / "data" / "deepvariant" / "ucsc.hg19.chr20.unittest.fasta.gz"


def test_registered_name_or_fasta_path() -> None:
    settings = Settings.model_validate(
        {"binding": {"references": {"hg19": str(REF)}}, "jobs": {"input_roots": [str(REF.parent)]}}
    )
    assert resolve_reference(settings, "hg19") == REF
    assert resolve_reference(settings, str(REF)) == REF


def test_unknown_name_lists_the_registered_ones() -> None:
    settings = Settings.model_validate({"binding": {"references": {"hg19": str(REF)}}})
    with pytest.raises(InvalidArgument, match=r"'hg38' is neither a registered reference \(registered: \['hg19'\]"):
        resolve_reference(settings, "hg38")


def test_realign_param_defaults_on_and_refuses_other_words() -> None:
    from genoserve.jobs.kinds.variants import CallBam

    kind = CallBam()
    assert kind.typed({}).realign is True
    assert kind.typed({"realign": "false"}).realign is False
    assert kind.typed({"realign": "True"}).realign is True
    with pytest.raises(InvalidArgument, match=r"params\[realign\].*true or false, got 'maybe'"):
        kind.typed({"realign": "maybe"})
