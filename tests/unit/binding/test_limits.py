"""Binding request limits: sequences and the bases the model runs on, checked before encoding."""

from __future__ import annotations

import pytest

from genoserve.binding.limits import RequestLimits
from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import BindingSettings

DEFAULTS = RequestLimits(BindingSettings().max_sequences, BindingSettings().max_bases)


def test_defaults_take_the_benchmark_and_cli_requests_and_multitask_mutagenesis() -> None:
    DEFAULTS.check_predict(256, 101)  # tests/bench/binding_bench.py, `genoserve predict binding --batch`
    DEFAULTS.check_predict(4096, 1000)
    DEFAULTS.check_variants(256, 1000)
    DEFAULTS.check_mutagenesis(1000)  # multitask-tf10: 3,001 sequences of 1,000 bases


def test_too_many_sequences_names_the_setting_and_the_count() -> None:
    with pytest.raises(InvalidArgument) as info:
        DEFAULTS.check_predict(30_000, 1)
    [violation] = info.value.violations
    assert violation.field == "sequences"
    assert violation.description == "30000 sequences exceeds binding.max_sequences = 4096 per request"


def test_bases_count_the_fitted_length_not_the_bases_sent() -> None:
    limits = RequestLimits(max_sequences=100, max_bases=10_000)
    limits.check_predict(10, 1000)
    with pytest.raises(InvalidArgument, match=r"11 sequences x 1000 bases .* = 11000 bases exceeds binding\.max_bases"):
        limits.check_predict(11, 1000)


def test_variants_count_two_windows_each() -> None:
    limits = RequestLimits(max_sequences=100, max_bases=10_000)
    limits.check_variants(5, 1000)
    with pytest.raises(
        InvalidArgument, match=r"6 variants x 2 windows \(ref, alt\) x 1000 bases = 12000 bases"
    ) as info:
        limits.check_variants(6, 1000)
    assert info.value.violations[0].field == "variants"
    with pytest.raises(InvalidArgument, match=r"101 variants exceeds binding\.max_sequences = 100"):
        limits.check_variants(101, 1)


def test_mutagenesis_counts_every_substitution() -> None:
    limits = RequestLimits(max_sequences=1, max_bases=3_001_000)
    limits.check_mutagenesis(1000)
    with pytest.raises(InvalidArgument, match=r"runs 6001 sequences x 2000 bases = 12002000 bases") as info:
        limits.check_mutagenesis(2000)
    assert info.value.violations[0].field == "sequence"
