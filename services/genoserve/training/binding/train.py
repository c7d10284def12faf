"""Trains, evaluates, exports and writes the seven binding models from one seed.

    python -m genoserve.training.binding.train --out models --seed 0           # make models
    python -m genoserve.training.binding.train --out /tmp/m --seed 0 --quick   # a few steps (tests)

Models: ``deepbind-{ctcf,gata1,spi1}`` and their baselines ``pwm-{ctcf,gata1,spi1}`` on 101 bp,
and ``multitask-tf10`` on 1000 bp, trained on the binding simulator (:mod:`.simulate`, labels by
:mod:`.rule`). Learned models are trained on the strand max, logit = max(f(x), f(rc(x))), as the
server's default ``max`` strand mode scores them. Metrics in model.yaml are those of the exported
ONNX graph, run by ONNX Runtime on both strands, on sets whose backgrounds come from held-out
chr20 regions (:func:`.evaluate.set_metrics`):

- ``auroc``, ``auprc``: the training mix's test split, labels drawn by the rule (``oracle_auroc``:
  the rule's own probability, the best any model can do there);
- ``single_site_auroc``, ``single_site_auprc``: :func:`.benchmark.single_site_set`;
- ``auroc_cluster_vs_lone``, ``auroc_composite_vs_misspaced``: :func:`.benchmark.grammar_set`;
- ``ism_ic_pearson``: motif recovery by in-silico mutagenesis (:mod:`.ism`);
- ``pwm_*``: the same for the PWM scan baseline.

Each deepbind model is compared with its PWM: at least as good on single-site detection, better
on every grammar task, and its ISM map recovers the matrix (Pearson >= 0.8); a bar it misses is
printed and recorded in provenance ``bars_missed``.
The multitask model keeps the tasks whose test auROC is at least :data:`TASK_AUROC_FLOOR`; the
others are cut from its output layer (named in provenance ``removed_tasks``). The floors are
written to ``preprocessing.metric_floors``, which the registry enforces at load
(:mod:`genoserve.binding.contract`). ``--quick`` skips these checks: its models only exercise the
plumbing.

Reproducible: same seed and thread count, same data, weights and metrics (deterministic torch
algorithms, fixed intra-op threads).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from genoserve.training.binding import evaluate, ism, simulate
from genoserve.training.binding.models import DeepBind, DilatedMultitask, PwmScan, keep_tasks, strand_max
from genoserve.training.binding.motifs import JASPAR_RELEASE, Motif, load_motifs, max_log_odds
from genoserve.training.binding.onehot import one_hot, reverse_complement
from genoserve.training.binding.rule import GRAMMARS, TEMPERATURE, THRESHOLDS
from genoserve.training.binding.simulate import Backgrounds, SimulatedSet
from genoserve.training.metrics import auroc
from genoserve.training.modelyaml import write_model_dir

Array = np.ndarray[Any, Any]

BINDING_TFS = ("CTCF", "GATA1", "SPI1")
MULTITASK_TASKS = ("CTCF", "GATA1", "SPI1", "CEBPA", "FOXA1", "HNF4A", "REST", "MAX", "YY1", "NRF1")
MULTITASK_NAME = "multitask-tf10"
OPSET = 17
SCRIPT = "genoserve.training.binding.train"
PREPROCESSING = {"alphabet": "ACGT", "unknown": "N", "default_strand": "max"}
INPUT_DOC = "one-hot DNA [batch, {length}, 4], channels A, C, G, T; N = 0.25 in each; one strand"
#: A multitask task below this held-out auROC is not served.
TASK_AUROC_FLOOR = 0.9
#: The ISM map must match the JASPAR matrix's information content at least this well.
ISM_FLOOR = 0.8
#: A deepbind version recording less than these is kept out at load (preprocessing.metric_floors).
DEEPBIND_FLOORS = {"single_site_auroc": 0.95, "ism_ic_pearson": ISM_FLOOR}


@dataclass(frozen=True)
class Budget:
    """Set sizes (sequences) and schedules."""

    binding_train: int = 40_000
    binding_valid: int = 2_000
    binding_test: int = 4_000
    binding_single_site: int = 2_000
    binding_grammar: int = 2_000
    binding_epochs: int = 10
    binding_batch: int = 128
    ism_positives: int = 100
    multitask_train: int = 20_000
    multitask_valid: int = 1_000
    multitask_test: int = 3_000
    multitask_single_site: int = 300
    multitask_grammar: int = 400
    multitask_epochs: int = 12
    multitask_batch: int = 64


QUICK = Budget(
    binding_train=256,
    binding_valid=128,
    binding_test=256,
    binding_single_site=64,
    binding_grammar=64,
    binding_epochs=1,
    ism_positives=4,
    multitask_train=128,
    multitask_valid=64,
    multitask_test=128,
    multitask_single_site=32,
    multitask_grammar=32,
    multitask_epochs=1,
)


@dataclass(frozen=True)
class Splits:
    train: SimulatedSet
    valid: SimulatedSet
    test: SimulatedSet


@dataclass(frozen=True)
class Fit:
    best_epoch: int
    valid_auprc: float
    seconds: float


def split_rng(seed: int, model_index: int, split_index: int) -> np.random.Generator:
    """One independent stream per (seed, model, split): 0 train, 1 valid, 2 test."""
    return np.random.default_rng([seed, model_index, split_index])


def torch_seed(seed: int, model_index: int) -> int:
    return int(np.random.SeedSequence([seed, model_index, 99]).generate_state(1)[0])


_ONE_HOT = torch.from_numpy(one_hot(np.arange(5, dtype=np.uint8)[None])[0])  # [5, 4]


def _batch(data: SimulatedSet, index: Array) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.from_numpy(data.codes[index].astype(np.int64))
    return _ONE_HOT[codes], torch.from_numpy(data.labels[index])


def predict(model: nn.Module, data: SimulatedSet, batch_size: int = 512) -> Array:
    """Strand-max logits ``[n, tasks]`` in eval mode."""
    model.eval()
    parts = []
    with torch.no_grad():
        for lo in range(0, data.codes.shape[0], batch_size):
            x, _ = _batch(data, np.arange(lo, min(lo + batch_size, data.codes.shape[0])))
            parts.append(strand_max(model, x).numpy())
    return np.concatenate(parts)


def fit(model: nn.Module, splits: Splits, epochs: int, batch_size: int, lr: float, seed: int, log_name: str) -> Fit:
    """Adam (weight decay 1e-4) on binary cross-entropy of the strand-max logits, learning rate on a cosine from ``lr``
    to 0 over the epochs; keeps the weights of the epoch with the best validation auPRC (macro mean
    over tasks)."""
    start = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = nn.BCEWithLogitsLoss()
    order_rng = np.random.default_rng(seed)
    n = splits.train.codes.shape[0]
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        order = order_rng.permutation(n)
        for lo in range(0, n, batch_size):
            x, y = _batch(splits.train, order[lo : lo + batch_size])
            loss = loss_fn(strand_max(model, x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * x.shape[0]
        schedule.step()
        valid = predict(model, splits.valid)
        tasks = splits.valid.tasks
        score = evaluate.task_metrics(splits.valid.labels, valid, tasks)["auprc"]
        print(f"  {log_name} epoch {epoch:2d}  loss {total / n:.4f}  valid auPRC {score:.4f}", flush=True)
        if score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return Fit(best[1], best[0], time.perf_counter() - start)


def export_onnx(model: nn.Module, length: int) -> bytes:
    """The eval-mode graph: input ``x`` [batch, length, 4], output ``logit`` [batch, tasks];
    dynamic batch axis only, opset 17 (TorchScript exporter: needs no onnxscript)."""
    model.eval()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        warnings.simplefilter("ignore", UserWarning)  # "constant folding not applied" for Pad's slices
        torch.onnx.export(
            model,
            (torch.zeros(2, length, 4),),
            path,
            input_names=["x"],
            output_names=["logit"],
            dynamic_axes={"x": {0: "batch"}, "logit": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        graph = onnx.load(path)
    graph.producer_name = "genoserve"
    onnx.checker.check_model(graph)
    return bytes(graph.SerializeToString())


def onnx_error(model: nn.Module, onnx_bytes: bytes, x: Array) -> float:
    """max |ONNX Runtime - torch| over a batch, forward strand."""
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = evaluate.strand_logits(evaluate.cpu_session(onnx_bytes), x, strand="forward")
    return float(np.abs(got - expected).max())


def simulate_splits(
    make: Callable[[int, np.random.Generator, Backgrounds], SimulatedSet],
    seed: int,
    model_index: int,
    sizes: Sequence[int],
    train_bg: Backgrounds,
    test_bg: Backgrounds,
) -> Splits:
    train = make(sizes[0], split_rng(seed, model_index, 0), train_bg)
    valid = make(sizes[1], split_rng(seed, model_index, 1), train_bg)
    test = make(sizes[2], split_rng(seed, model_index, 2), test_bg)
    return Splits(train, valid, test)


def provenance(
    seed: int, motifs: dict[str, Motif], named: Sequence[str], splits: Splits, threads: int, **extra: object
) -> dict[str, str]:
    out = {
        "script": SCRIPT,
        "seed": str(seed),
        "torch": str(torch.__version__),
        "threads": str(threads),
        "jaspar_release": JASPAR_RELEASE,
        "jaspar_ids": ",".join(f"{m.name}={m.matrix_id}" for m in motifs.values()),
        "backgrounds": "hg19 chr20 windows",
        "train_regions": ";".join(f"{c}:{a}-{b}" for c, a, b in simulate.TRAIN_REGIONS),
        "test_regions": ";".join(f"{c}:{a}-{b}" for c, a, b in simulate.HELD_OUT_REGIONS),
        "train_size": str(splits.train.codes.shape[0]),
        "valid_size": str(splits.valid.codes.shape[0]),
        "test_size": str(splits.test.codes.shape[0]),
        "binding_rule": f"p = 1 / (1 + 2^((threshold - E) / {TEMPERATURE})), E = best site's log-odds + "
        "2 bits per other site within 100 bp (at most 2) + 4 bits with the preferred partner",
    }
    out |= {f"consensus_{name}": motifs[name].consensus for name in named}
    out |= {f"threshold_{name}": str(THRESHOLDS[name]) for name in named}
    out |= {k: str(v) for k, v in extra.items()}
    return out


def binding_spec(
    name: str, tasks: Sequence[str], length: int, description: str, output_doc: str, floors: dict[str, float]
) -> dict[str, Any]:
    preprocessing: dict[str, Any] = {"sequence_length": length, **PREPROCESSING}
    if floors:
        preprocessing["metric_floors"] = floors
    return {
        "name": name,
        "family": "binding",
        "description": description,
        "inputs": [
            {"name": "x", "dtype": "float32", "shape": [-1, length, 4], "description": INPUT_DOC.format(length=length)}
        ],
        "outputs": [
            {
                "name": "logit",
                "dtype": "float32",
                "shape": [-1, len(tasks)],
                "labels": list(tasks),
                "description": output_doc,
            }
        ],
        "preprocessing": preprocessing,
        "batching": {"max_batch_size": 512 if length <= 101 else 256, "max_queue_delay_us": 0},
    }


def grammar_doc(tf: str) -> str:
    grammar = GRAMMARS[tf]
    return (
        f"{tf}+{grammar.partner}: the {grammar.partner} {'before' if grammar.partner_first else 'after'} "
        f"the {tf} site, gap {grammar.gap} bp, {'same' if grammar.partner_strand == 1 else 'opposite'} strand"
    )


def train_binding(
    tf: str,
    model_index: int,
    args: argparse.Namespace,
    budget: Budget,
    motifs: dict[str, Motif],
    train_bg: Backgrounds,
    test_bg: Backgrounds,
) -> dict[str, dict[str, float]]:
    length = simulate.BINDING_LENGTH

    def make(n: int, rng: np.random.Generator, bg: Backgrounds) -> SimulatedSet:
        return simulate.simulate_binding(motifs, tf, n, rng, bg, length)

    sizes = (budget.binding_train, budget.binding_valid, budget.binding_test)
    splits = simulate_splits(make, args.seed, model_index, sizes, train_bg, test_bg)
    sets = evaluate.eval_sets(
        motifs, tf, splits.test, split_rng(args.seed, model_index, 3), test_bg,
        budget.binding_single_site, budget.binding_grammar,
    )  # fmt: skip

    # The PWM baseline: fixed weights, nothing to train.
    pwm = PwmScan(motifs[tf].log_odds())
    pwm_bytes = export_onnx(pwm, length)
    pwm_metrics = evaluate.set_metrics(evaluate.session_scorer(evaluate.cpu_session(pwm_bytes)), sets)
    x_test = splits.test.one_hot()
    pwm_scores = evaluate.strand_logits(evaluate.cpu_session(pwm_bytes), x_test)
    log_odds = motifs[tf].log_odds()
    numpy_scan = np.maximum(max_log_odds(x_test, log_odds), max_log_odds(reverse_complement(x_test), log_odds))
    pwm_metrics["max_abs_error_vs_numpy"] = float(np.abs(pwm_scores[:, 0] - numpy_scan).max())

    torch.manual_seed(torch_seed(args.seed, model_index))
    model = DeepBind()
    result = fit(
        model, splits, budget.binding_epochs, budget.binding_batch, 3e-3, args.seed + model_index, f"deepbind-{tf}"
    )
    deepbind_bytes = export_onnx(model, length)
    session = evaluate.cpu_session(deepbind_bytes)
    metrics = evaluate.set_metrics(evaluate.session_scorer(session), sets)
    metrics["oracle_auroc"] = auroc(splits.test.labels[:, 0], splits.test.probability[:, 0])
    recovery, offset = ism.ic_pearson(
        ism.mean_map(session, sets.single_site, tf, limit=budget.ism_positives), motifs[tf]
    )
    metrics["ism_ic_pearson"] = recovery
    metrics |= {f"pwm_{k}": v for k, v in pwm_metrics.items() if k != "max_abs_error_vs_numpy"}
    metrics["max_abs_error_vs_torch"] = onnx_error(model, deepbind_bytes, x_test[:256])
    name = f"deepbind-{tf.lower()}"
    print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
    missed = [] if args.quick else bars_missed(metrics)
    if missed:
        print(f"  {name} misses: " + "; ".join(missed), flush=True)
    pwm_metrics["deepbind_single_site_auroc"] = metrics["single_site_auroc"]
    floors = {} if args.quick else dict(DEEPBIND_FLOORS)

    named = (tf, GRAMMARS[tf].partner)
    common = {
        "grammar": grammar_doc(tf),
        "quick": args.quick,
        "ism_offset": offset,
        "bars_missed": "; ".join(missed) or "none",
    }
    write_model_dir(
        args.out,
        binding_spec(
            f"pwm-{tf.lower()}",
            (tf,),
            length,
            f"PWM log-odds scan baseline for {tf} (JASPAR {motifs[tf].matrix_id}): "
            "fixed convolution, max over positions.",
            f"max over positions of the log2-odds score of {tf}'s PWM on the given strand (not a calibrated logit)",
            {},
        ),
        args.version,
        pwm_bytes,
        pwm_metrics,
        provenance(
            args.seed,
            motifs,
            named,
            splits,
            args.threads,
            grammar=grammar_doc(tf),
            quick=args.quick,
            pseudo_frequency=0.01,
            training_seconds=0,
        ),
    )
    write_model_dir(
        args.out,
        binding_spec(
            name,
            (tf,),
            length,
            f"DeepBind-style {tf} binding on 101 bp, trained on simulated binding: the best site's "
            "JASPAR log-odds, raised by homotypic clusters and the preferred partner; composition-matched decoys.",
            f"{tf} binding logit of the given strand; sigmoid gives the probability",
            floors,
        ),
        args.version,
        deepbind_bytes,
        metrics,
        provenance(
            args.seed,
            motifs,
            named,
            splits,
            args.threads,
            **common,
            architecture=DeepBind.DESCRIPTION,
            best_epoch=result.best_epoch,
            epochs=budget.binding_epochs,
            training_seconds=f"{result.seconds:.1f}",
        ),
    )
    return {name: metrics | {"seconds": result.seconds}, f"pwm-{tf.lower()}": pwm_metrics}


def bars_missed(metrics: dict[str, float]) -> list[str]:
    """Every bar of the comparison with the PWM (and of ISM recovery) the model misses."""
    missed = []
    if metrics["single_site_auroc"] < metrics["pwm_single_site_auroc"]:
        missed.append(
            f"single_site_auroc {metrics['single_site_auroc']:.4f} < PWM {metrics['pwm_single_site_auroc']:.4f}"
        )
    for key in (k for k in metrics if k.startswith("auroc_")):
        if metrics[key] <= metrics[f"pwm_{key}"]:
            missed.append(f"{key} {metrics[key]:.4f} <= PWM {metrics[f'pwm_{key}']:.4f}")
    if metrics["ism_ic_pearson"] < ISM_FLOOR:
        missed.append(f"ism_ic_pearson {metrics['ism_ic_pearson']:.4f} < {ISM_FLOOR}")
    return missed


def column(score: evaluate.Scorer, j: int) -> evaluate.Scorer:
    """The scorer of one task (column ``j``), as ``[n, 1]``."""
    return lambda x: score(x)[:, [j]]


def train_multitask(
    args: argparse.Namespace,
    budget: Budget,
    motifs: dict[str, Motif],
    train_bg: Backgrounds,
    test_bg: Backgrounds,
) -> dict[str, dict[str, float]]:
    model_index = len(BINDING_TFS)
    length = simulate.MULTITASK_LENGTH

    def make(n: int, rng: np.random.Generator, bg: Backgrounds) -> SimulatedSet:
        return simulate.simulate_multitask(motifs, MULTITASK_TASKS, n, rng, bg, length)

    sizes = (budget.multitask_train, budget.multitask_valid, budget.multitask_test)
    splits = simulate_splits(make, args.seed, model_index, sizes, train_bg, test_bg)
    torch.manual_seed(torch_seed(args.seed, model_index))
    model = DilatedMultitask(len(MULTITASK_TASKS))
    result = fit(
        model, splits, budget.multitask_epochs, budget.multitask_batch, 3e-3, args.seed + model_index, MULTITASK_NAME
    )
    x_test = splits.test.one_hot()
    scores = evaluate.strand_logits(evaluate.cpu_session(export_onnx(model, length)), x_test)
    test_auroc = {t: auroc(splits.test.labels[:, j], scores[:, j]) for j, t in enumerate(MULTITASK_TASKS)}
    print(f"  {MULTITASK_NAME} test auROC: " + ", ".join(f"{t} {v:.4f}" for t, v in test_auroc.items()), flush=True)
    kept = tuple(t for t in MULTITASK_TASKS if args.quick or test_auroc[t] >= TASK_AUROC_FLOOR)
    removed = {t: v for t, v in test_auroc.items() if t not in kept}
    if not kept:
        raise SystemExit(f"{MULTITASK_NAME}: no task reaches auROC {TASK_AUROC_FLOOR}: {test_auroc}")
    served = keep_tasks(model, [MULTITASK_TASKS.index(t) for t in kept])
    model_bytes = export_onnx(served, length)
    session = evaluate.cpu_session(model_bytes)

    eval_rng = split_rng(args.seed, model_index, 3)
    pwm = evaluate.pwm_scorer([motifs[t].log_odds() for t in kept])
    learned = evaluate.session_scorer(session)
    metrics: dict[str, float] = {}
    baseline: dict[str, float] = {}
    for j, tf in enumerate(kept):
        test = SimulatedSet(
            splits.test.codes, splits.test.labels[:, [MULTITASK_TASKS.index(tf)]],
            splits.test.probability[:, [MULTITASK_TASKS.index(tf)]], (tf,), splits.test.scenario, splits.test.sites,
        )  # fmt: skip
        sets = evaluate.eval_sets(
            motifs, tf, test, eval_rng, test_bg, budget.multitask_single_site, budget.multitask_grammar
        )
        metrics |= evaluate.set_metrics(column(learned, j), sets, suffix=f"_{tf}")
        metrics[f"oracle_auroc_{tf}"] = auroc(test.labels[:, 0], test.probability[:, 0])
        baseline |= evaluate.set_metrics(column(pwm, j), sets, suffix=f"_{tf}")
    metrics = {
        "auroc": float(np.mean([metrics[f"auroc_{t}"] for t in kept])),
        "auprc": float(np.mean([metrics[f"auprc_{t}"] for t in kept])),
        **metrics,
    }
    metrics |= {f"pwm_{k}": v for k, v in baseline.items()}
    metrics["max_abs_error_vs_torch"] = onnx_error(served, model_bytes, x_test[:64])
    print(f"  {MULTITASK_NAME}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)

    spec = binding_spec(
        MULTITASK_NAME,
        kept,
        length,
        f"DeepSEA/Basenji-style dilated residual CNN predicting {len(kept)} TFs at once from 1000 bp, "
        "trained on simulated binding (best site's JASPAR log-odds, homotypic clusters, preferred pairs).",
        "binding logit per TF for the given strand; sigmoid gives the probability",
        {} if args.quick else {"auroc_{task}": TASK_AUROC_FLOOR},
    )
    named = (*kept, *(g.partner for tf, g in GRAMMARS.items() if tf in kept and g.partner not in kept))
    write_model_dir(
        args.out,
        spec,
        args.version,
        model_bytes,
        metrics,
        provenance(
            args.seed,
            motifs,
            named,
            splits,
            args.threads,
            quick=args.quick,
            grammar="; ".join(grammar_doc(tf) for tf in GRAMMARS if tf in kept),
            removed_tasks="; ".join(f"{t} (test auROC {v:.3f} < {TASK_AUROC_FLOOR})" for t, v in removed.items())
            or "none",
            architecture=DilatedMultitask.DESCRIPTION,
            best_epoch=result.best_epoch,
            epochs=budget.multitask_epochs,
            training_seconds=f"{result.seconds:.1f}",
        ),
    )
    return {MULTITASK_NAME: metrics | {"seconds": result.seconds}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and export the binding models.")
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (fixed for reproducibility)")
    parser.add_argument("--quick", action="store_true", help="tiny sets, one epoch: for tests of the plumbing")
    parser.add_argument("--reference", type=Path, default=simulate.REFERENCE, help="bgzipped hg19 chr20 FASTA")
    parser.add_argument(
        "--only", action="append", default=[], help="train only these (CTCF, GATA1, SPI1, multitask); repeatable"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    budget = QUICK if args.quick else Budget()
    motifs = load_motifs()
    train_bg = Backgrounds.from_fasta(args.reference, simulate.TRAIN_REGIONS)
    test_bg = Backgrounds.from_fasta(args.reference, simulate.HELD_OUT_REGIONS)

    start = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    for index, tf in enumerate(BINDING_TFS):
        if not args.only or tf in args.only:
            results |= train_binding(tf, index, args, budget, motifs, train_bg, test_bg)
    if not args.only or "multitask" in args.only:
        results |= train_multitask(args, budget, motifs, train_bg, test_bg)
    elapsed = time.perf_counter() - start

    print(f"\n{'model':<16} {'single-site auROC':>18} {'PWM':>7} {'auROC':>7} {'train s':>8}")
    for name, m in results.items():
        single = m.get("single_site_auroc", float("nan"))
        pwm = m.get("pwm_single_site_auroc", float("nan"))
        print(f"{name:<16} {single:18.4f} {pwm:7.4f} {m['auroc']:7.4f} {m.get('seconds', 0.0):8.1f}")
    print(f"wrote {len(results)} models to {args.out} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
