"""The model cards' claim about single-site detection: on the single-site set training builds,
the binding rule's own energy, used as a score, does not beat the PWM scan, so no model of
binding is expected to (``python -m genoserve.training.binding.ceiling``)."""

from __future__ import annotations

import pytest

from genoserve.training.binding import ceiling
from tests.support.server import REPO


def test_the_binding_rule_itself_at_best_ties_the_pwm_on_single_sites(capsys: pytest.CaptureFixture[str]) -> None:
    ceiling.main(["--models", str(REPO / "models")])
    rows = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[0].strip() for row in rows] == ["CTCF", "GATA1", "SPI1"]
    for tf, energy, pwm, _ in rows:
        assert float(energy) <= float(pwm) + 0.001, tf  # a tie at most: 2,000 + 2,000 sequences
