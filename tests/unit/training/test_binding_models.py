"""The committed binding models do what their model.yaml says on freshly simulated data, and
training (quick mode) exports models the registry loads.

Fresh sets use a seed the training script never uses and the held-out chr20 backgrounds; models
are scored on both strands with max, as the server's default strand mode does. Set sizes keep
each test within a few seconds on two cores.
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
from genoserve.training.binding import evaluate, ism, simulate, train
from genoserve.training.binding.motifs import Motif, load_motifs, max_log_odds
from genoserve.training.binding.onehot import reverse_complement
from genoserve.training.binding.simulate import Backgrounds, SimulatedSet

MODELS = Path(__file__).resolve().parents[3] / "models"
BINDING_TFS = ("CTCF", "GATA1", "SPI1")
MULTITASK = "multitask-tf10"
ALL_MODELS = (*(f"{kind}-{tf.lower()}" for kind in ("deepbind", "pwm") for tf in BINDING_TFS), MULTITASK)
FRESH_SEED = 271828
#: Tolerances against model.yaml, about 3 standard errors at these set sizes.
AUROC_TOLERANCE = {"auroc": 0.03, "auprc": 0.06, "single_site_auroc": 0.01, "single_site_auprc": 0.01}
GRAMMAR_TOLERANCE = 0.05
TASK_AUROC_TOLERANCE = 0.05
#: How far below the PWM scan a deepbind model may be on single-site detection.
SINGLE_SITE_MARGIN = 0.01


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


def session(name: str) -> Any:
    spec, _ = recorded(name)
    version = max(v["version"] for v in spec["versions"])
    return evaluate.cpu_session(MODELS / name / str(version) / "model.onnx")


def fresh_sets(motifs: dict[str, Motif], tf: str, backgrounds: Backgrounds) -> evaluate.EvalSets:
    rng = np.random.default_rng([FRESH_SEED, len(tf)])
    test = simulate.simulate_binding(motifs, tf, 1500, rng, backgrounds)
    return evaluate.eval_sets(motifs, tf, test, rng, backgrounds, single_site_n=800, grammar_n=600)


def assert_close(got: dict[str, float], want: dict[str, float], name: str) -> None:
    for key, value in got.items():
        tolerance = AUROC_TOLERANCE.get(key, GRAMMAR_TOLERANCE)
        assert value == pytest.approx(want[key], abs=tolerance), (
            f"{name} {key}: fresh {value:.4f}, recorded {want[key]}"
        )


@pytest.mark.parametrize("tf", BINDING_TFS)
def test_deepbind_and_pwm_reproduce_their_metrics_and_deepbind_knows_more_grammar(
    tf: str, motifs: dict[str, Motif], held_out: Backgrounds
) -> None:
    sets = fresh_sets(motifs, tf, held_out)
    deepbind, pwm = f"deepbind-{tf.lower()}", f"pwm-{tf.lower()}"
    got_deepbind = evaluate.set_metrics(evaluate.session_scorer(session(deepbind)), sets)
    got_pwm = evaluate.set_metrics(evaluate.session_scorer(session(pwm)), sets)
    spec, want_deepbind = recorded(deepbind)
    _, want_pwm = recorded(pwm)
    assert spec["outputs"][0]["labels"] == [tf]
    assert_close(got_deepbind, want_deepbind, deepbind)
    assert_close(got_pwm, want_pwm, pwm)
    # Single sites: within 0.01 auROC of the PWM scan, as recorded (the card says by how much it
    # trails) and on fresh data; and far better than the PWM on each grammar task.
    assert want_deepbind["pwm_single_site_auroc"] == want_pwm["single_site_auroc"]
    assert want_deepbind["single_site_auroc"] >= want_deepbind["pwm_single_site_auroc"] - SINGLE_SITE_MARGIN
    assert got_deepbind["single_site_auroc"] >= got_pwm["single_site_auroc"] - SINGLE_SITE_MARGIN
    for task in ("cluster_vs_lone", "composite_vs_misspaced"):
        assert got_deepbind[f"auroc_{task}"] > got_pwm[f"auroc_{task}"] + 0.1, task


@pytest.mark.parametrize("tf", BINDING_TFS)
def test_deepbind_mutagenesis_recovers_the_jaspar_matrix(
    tf: str, motifs: dict[str, Motif], held_out: Backgrounds
) -> None:
    from genoserve.training.binding import benchmark

    positives = benchmark.single_site_set(motifs, tf, 60, np.random.default_rng([FRESH_SEED, 7]), held_out, 101)
    name = f"deepbind-{tf.lower()}"
    r, _ = ism.ic_pearson(ism.mean_map(session(name), positives, tf, limit=60), motifs[tf])
    _, want = recorded(name)
    assert r >= 0.8
    assert r == pytest.approx(want["ism_ic_pearson"], abs=0.1)


def test_pwm_model_is_the_log_odds_scan(motifs: dict[str, Motif], held_out: Backgrounds) -> None:
    data = simulate.simulate_binding(motifs, "CTCF", 200, np.random.default_rng(FRESH_SEED), held_out)
    x = data.one_hot()
    log_odds = motifs["CTCF"].log_odds()
    expected = np.maximum(max_log_odds(x, log_odds), max_log_odds(reverse_complement(x), log_odds))
    np.testing.assert_allclose(evaluate.strand_logits(session("pwm-ctcf"), x)[:, 0], expected, atol=1e-4)


def test_multitask_serves_only_tasks_above_the_floor_and_reproduces_them(
    motifs: dict[str, Motif], held_out: Backgrounds
) -> None:
    spec, want = recorded(MULTITASK)
    tasks = tuple(spec["outputs"][0]["labels"])
    assert len(tasks) >= 5
    assert spec["preprocessing"]["metric_floors"] == {"auroc_{task}": train.TASK_AUROC_FLOOR}
    data = simulate.simulate_multitask(motifs, tasks, 700, np.random.default_rng(FRESH_SEED), held_out)
    scores = evaluate.strand_logits(session(MULTITASK), data.one_hot())
    got = evaluate.task_metrics(data.labels, scores, tasks)
    for task in tasks:
        assert want[f"auroc_{task}"] >= train.TASK_AUROC_FLOOR, task
        assert got[f"auroc_{task}"] == pytest.approx(want[f"auroc_{task}"], abs=TASK_AUROC_TOLERANCE), task
        assert got[f"auroc_{task}"] >= train.TASK_AUROC_FLOOR - TASK_AUROC_TOLERANCE, task
    pwm = evaluate.pwm_scorer([motifs[t].log_odds() for t in tasks])(data.one_hot())
    assert got["auroc"] > evaluate.task_metrics(data.labels, pwm, tasks)["auroc"]


def test_multitask_single_site_and_grammar_as_recorded(motifs: dict[str, Motif], held_out: Backgrounds) -> None:
    """One task with a grammar pair, on fresh held-out sets at 1,000 bp."""
    spec, want = recorded(MULTITASK)
    tasks = list(spec["outputs"][0]["labels"])
    tf = next(t for t in ("CTCF", "SPI1", "GATA1") if t in tasks)
    rng = np.random.default_rng([FRESH_SEED, 3])
    test = simulate.simulate_multitask(motifs, (tf,), 300, rng, held_out)
    sets = evaluate.eval_sets(motifs, tf, test, rng, held_out, single_site_n=200, grammar_n=300)
    scorer = evaluate.session_scorer(session(MULTITASK))
    got = evaluate.set_metrics(lambda x: scorer(x)[:, [tasks.index(tf)]], sets, suffix=f"_{tf}")
    for key in (f"single_site_auroc_{tf}", f"auroc_cluster_vs_lone_{tf}", f"auroc_composite_vs_misspaced_{tf}"):
        assert got[key] == pytest.approx(want[key], abs=0.06), key


def _check_loadable(model_dir: Path, names: tuple[str, ...]) -> None:
    records = registry.scan(model_dir, only=names)
    assert sorted(r.name for r in records) == sorted(names)
    for record in records:
        assert record.spec is not None, record.reason
        assert record.reason == "", record.reason
        assert registry.check_file(record) is None
        loaded = load_session(record, RuntimeSettings())  # checksum, signature against model.yaml, warm-up
        [tensor] = record.spec.inputs
        [output] = record.spec.outputs
        assert (tensor.name, output.name) == ("x", "logit")
        assert record.spec.family == "binding"
        assert record.spec.preprocessing["sequence_length"] == tensor.shape[1]
        out = loaded.run({"x": tensor.example(batch=3)})["logit"]
        assert out.shape == (3, len(output.labels))
        assert out.dtype == np.float32


def test_committed_models_pass_the_registry_checks() -> None:
    _check_loadable(MODELS, ALL_MODELS)
    for name in ALL_MODELS:
        assert (MODELS / name / "1" / "model.onnx").stat().st_size < 20 * 1024 * 1024


def test_quick_training_exports_models_the_registry_loads(tmp_path: Path) -> None:
    train.main(["--out", str(tmp_path), "--seed", "0", "--quick"])
    _check_loadable(tmp_path, ALL_MODELS)
    spec = yaml.safe_load((tmp_path / "deepbind-ctcf" / "model.yaml").read_text())
    provenance = spec["versions"][0]["provenance"]
    assert provenance["quick"] == "True"
    assert provenance["consensus_CTCF"] == "GCCACCAGGGGGCGC"
    assert "MA0139.2" in provenance["jaspar_ids"]
    metrics = spec["versions"][0]["metrics"]
    for key in ("single_site_auroc", "pwm_single_site_auroc", "auroc_cluster_vs_lone", "ism_ic_pearson"):
        assert key in metrics


def test_training_data_is_reproducible_from_the_seed(motifs: dict[str, Motif], held_out: Backgrounds) -> None:
    def make(seed: int) -> SimulatedSet:
        return simulate.simulate_binding(motifs, "SPI1", 100, train.split_rng(seed, 2, 0), held_out)

    assert np.array_equal(make(0).codes, make(0).codes)
    assert np.array_equal(make(0).labels, make(0).labels)
