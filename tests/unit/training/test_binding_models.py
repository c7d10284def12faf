"""The committed binding models do what their model.yaml says on freshly simulated data, and
training (quick mode) exports models the registry loads.

Fresh test sets use a seed the training script never uses and the held-out chr20 backgrounds;
models are scored on both strands with max, as the server's default strand mode does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.loader import load_session
from genoserve.training.binding import evaluate, simulate, train
from genoserve.training.binding.motifs import Motif, load_motifs, max_log_odds
from genoserve.training.binding.onehot import reverse_complement
from genoserve.training.binding.simulate import Backgrounds

MODELS = Path(__file__).resolve().parents[3] / "models"
BINDING_TFS = ("CTCF", "GATA1", "SPI1")
MULTITASK = "multitask-tf10"
ALL_MODELS = (*(f"{kind}-{tf.lower()}" for kind in ("deepbind", "pwm") for tf in BINDING_TFS), MULTITASK)
FRESH_SEED = 271828
#: Tolerances against model.yaml: about 3 standard errors at these set sizes.
AUROC_TOLERANCE = 0.03
AUPRC_TOLERANCE = 0.04
TASK_AUROC_TOLERANCE = 0.06


@pytest.fixture(scope="module")
def motifs() -> dict[str, Motif]:
    return load_motifs()


@pytest.fixture(scope="module")
def held_out() -> Backgrounds:
    return Backgrounds.from_fasta(simulate.REFERENCE, simulate.HELD_OUT_REGIONS)


def recorded(name: str) -> tuple[dict[str, Any], dict[str, float]]:
    """(model.yaml, metrics of its latest version)."""
    spec = yaml.safe_load((MODELS / name / "model.yaml").read_text())
    latest = max(spec["versions"], key=lambda v: v["version"])
    return spec, latest["metrics"]


def served_logits(name: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    spec, _ = recorded(name)
    version = max(v["version"] for v in spec["versions"])
    session = evaluate.cpu_session(MODELS / name / str(version) / "model.onnx")
    return evaluate.strand_logits(session, x, strand=spec["preprocessing"]["default_strand"])


@pytest.mark.parametrize("tf", BINDING_TFS)
def test_deepbind_and_pwm_reproduce_their_metrics_and_deepbind_wins(
    tf: str, motifs: dict[str, Motif], held_out: Backgrounds
) -> None:
    data = simulate.simulate_binding(motifs, tf, 3000, np.random.default_rng([FRESH_SEED, len(tf)]), held_out)
    x = data.one_hot()
    results = {}
    for kind in ("deepbind", "pwm"):
        name = f"{kind}-{tf.lower()}"
        spec, want = recorded(name)
        assert spec["outputs"][0]["labels"] == [tf]
        got = evaluate.task_metrics(data.labels, served_logits(name, x), (tf,))
        assert got["auroc"] == pytest.approx(want["auroc"], abs=AUROC_TOLERANCE), name
        assert got["auprc"] == pytest.approx(want["auprc"], abs=AUPRC_TOLERANCE), name
        results[kind] = got
    assert results["deepbind"]["auprc"] > results["pwm"]["auprc"]
    # The deepbind model.yaml records its PWM baseline on the same split as the pwm model.yaml.
    _, deepbind_metrics = recorded(f"deepbind-{tf.lower()}")
    _, pwm_metrics = recorded(f"pwm-{tf.lower()}")
    assert deepbind_metrics["pwm_auprc"] == pwm_metrics["auprc"]


def test_pwm_model_is_the_log_odds_scan(motifs: dict[str, Motif], held_out: Backgrounds) -> None:
    data = simulate.simulate_binding(motifs, "CTCF", 200, np.random.default_rng(FRESH_SEED), held_out)
    x = data.one_hot()
    log_odds = motifs["CTCF"].log_odds()
    expected = np.maximum(max_log_odds(x, log_odds), max_log_odds(reverse_complement(x), log_odds))
    np.testing.assert_allclose(served_logits("pwm-ctcf", x)[:, 0], expected, atol=1e-4)


def test_multitask_reproduces_its_metrics_and_beats_the_pwm_scans(
    motifs: dict[str, Motif], held_out: Backgrounds
) -> None:
    spec, want = recorded(MULTITASK)
    tasks = tuple(spec["outputs"][0]["labels"])
    assert len(tasks) >= 8
    data = simulate.simulate_multitask(motifs, tasks, 1500, np.random.default_rng(FRESH_SEED), held_out)
    x = data.one_hot()
    got = evaluate.task_metrics(data.labels, served_logits(MULTITASK, x), tasks)
    assert got["auroc"] == pytest.approx(want["auroc"], abs=AUROC_TOLERANCE)
    assert got["auprc"] == pytest.approx(want["auprc"], abs=AUPRC_TOLERANCE)
    for task in tasks:
        assert got[f"auroc_{task}"] == pytest.approx(want[f"auroc_{task}"], abs=TASK_AUROC_TOLERANCE), task
    pwm = np.stack(
        [np.maximum(max_log_odds(x, motifs[t].log_odds()), max_log_odds(reverse_complement(x), motifs[t].log_odds()))
         for t in tasks],
        axis=1,
    )  # fmt: skip
    assert got["auprc"] > evaluate.task_metrics(data.labels, pwm, tasks)["auprc"]


def _check_loadable(model_dir: Path, names: tuple[str, ...]) -> None:
    records = registry.scan(model_dir, only=names)
    assert sorted(r.name for r in records) == sorted(names)
    for record in records:
        assert record.spec is not None, record.reason
        assert registry.check_file(record) is None
        session = load_session(record, RuntimeSettings())  # checksum, signature against model.yaml, warm-up
        [tensor] = record.spec.inputs
        [output] = record.spec.outputs
        assert (tensor.name, output.name) == ("x", "logit")
        assert record.spec.family == "binding"
        assert record.spec.preprocessing["sequence_length"] == tensor.shape[1]
        out = session.run({"x": tensor.example(batch=3)})["logit"]
        assert out.shape == (3, len(output.labels))
        assert out.dtype == np.float32


def test_committed_models_pass_the_registry_checks() -> None:
    _check_loadable(MODELS, ALL_MODELS)
    for name in ALL_MODELS:
        assert (MODELS / name / "1" / "model.onnx").stat().st_size < 2 * 1024 * 1024


def test_quick_training_exports_models_the_registry_loads(tmp_path: Path) -> None:
    train.main(["--out", str(tmp_path), "--seed", "0", "--quick"])
    _check_loadable(tmp_path, ALL_MODELS)
    spec = yaml.safe_load((tmp_path / "deepbind-ctcf" / "model.yaml").read_text())
    provenance = spec["versions"][0]["provenance"]
    assert provenance["quick"] == "True"
    assert provenance["consensus_CTCF"] == "GCCACCAGGGGGCGC"
    assert "MA0139.2" in provenance["jaspar_ids"]
