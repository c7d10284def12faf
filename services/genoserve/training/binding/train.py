"""Trains, evaluates, exports and writes the seven binding models from one seed.

    python -m genoserve.training.binding.train --out models --seed 0           # make models
    python -m genoserve.training.binding.train --out /tmp/m --seed 0 --quick   # a few steps (tests)

Models: ``deepbind-{ctcf,gata1,spi1}`` and their baselines ``pwm-{ctcf,gata1,spi1}`` on the 101 bp
single-TF grammar tasks, and ``multitask-tf10`` on 1000 bp (see :mod:`.simulate`). Learned models
are trained on the strand max, logit = max(f(x), f(rc(x))), as the server's default ``max`` strand
mode scores them. Metrics in model.yaml are those of the exported ONNX graph, run by ONNX Runtime
on both strands, on a test set whose backgrounds come from held-out chr20 regions. A deepbind model
(and the multitask model) that does not beat its PWM baseline's auPRC is not written (except with
``--quick``, whose models only exercise the plumbing).

Reproducible: same seed and thread count, same data, weights and metrics (deterministic torch
algorithms, fixed intra-op threads).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from genoserve.training.binding import evaluate, simulate
from genoserve.training.binding.models import DeepBind, DilatedMultitask, PwmScan, strand_max
from genoserve.training.binding.motifs import JASPAR_RELEASE, Motif, load_motifs, max_log_odds
from genoserve.training.binding.onehot import one_hot, reverse_complement
from genoserve.training.binding.simulate import GRAMMARS, Backgrounds, SimulatedSet
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


@dataclass(frozen=True)
class Budget:
    """Set sizes (sequences) and schedules."""

    binding_train: int = 40_000
    binding_valid: int = 2_000
    binding_test: int = 6_000
    binding_epochs: int = 10
    binding_batch: int = 128
    multitask_train: int = 16_000
    multitask_valid: int = 1_000
    multitask_test: int = 3_000
    multitask_epochs: int = 10
    multitask_batch: int = 64


QUICK = Budget(
    binding_train=256,
    binding_valid=128,
    binding_test=256,
    binding_epochs=1,
    multitask_train=128,
    multitask_valid=64,
    multitask_test=128,
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
    """Adam on binary cross-entropy of the strand-max logits, learning rate on a cosine from ``lr``
    to 0 over the epochs; keeps the weights of the epoch with the best validation auPRC (macro mean
    over tasks)."""
    start = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
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


def grammar_metrics(data: SimulatedSet, scores: Array, prefix: str = "") -> dict[str, float]:
    """auROC of each positive scenario against the negatives that hold equally strong sites."""
    out = {}
    for positive, negative in (("cluster", "lone"), ("composite", "misspaced")):
        keep = np.isin(data.scenario, [positive, negative])
        out[f"{prefix}auroc_{positive}_vs_{negative}"] = auroc(data.scenario[keep] == positive, scores[keep, 0])
    return out


def simulate_splits(
    make: Any, seed: int, model_index: int, sizes: Sequence[int], train_bg: Backgrounds, test_bg: Backgrounds
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
        "backgrounds": "50% hg19 chr20 windows, 50% GC-matched random",
        "train_regions": ";".join(f"{c}:{a}-{b}" for c, a, b in simulate.TRAIN_REGIONS),
        "test_regions": ";".join(f"{c}:{a}-{b}" for c, a, b in simulate.HELD_OUT_REGIONS),
        "train_size": str(splits.train.codes.shape[0]),
        "valid_size": str(splits.valid.codes.shape[0]),
        "test_size": str(splits.test.codes.shape[0]),
    }
    out |= {f"consensus_{name}": motifs[name].consensus for name in named}
    out |= {k: str(v) for k, v in extra.items()}
    return out


def binding_spec(name: str, tf: str, length: int, description: str, output_doc: str) -> dict[str, Any]:
    return {
        "name": name,
        "family": "binding",
        "description": description,
        "inputs": [
            {"name": "x", "dtype": "float32", "shape": [-1, length, 4], "description": INPUT_DOC.format(length=length)}
        ],
        "outputs": [{"name": "logit", "dtype": "float32", "shape": [-1, 1], "labels": [tf], "description": output_doc}],
        "preprocessing": {"sequence_length": length, **PREPROCESSING},
        "batching": {"max_batch_size": 512, "max_queue_delay_us": 0},
    }


def train_binding(
    tf: str,
    model_index: int,
    args: argparse.Namespace,
    budget: Budget,
    motifs: dict[str, Motif],
    train_bg: Backgrounds,
    test_bg: Backgrounds,
) -> dict[str, dict[str, float]]:
    grammar = GRAMMARS[tf]
    length = simulate.BINDING_LENGTH

    def make(n: int, rng: np.random.Generator, bg: Backgrounds) -> SimulatedSet:
        return simulate.simulate_binding(motifs, tf, n, rng, bg, length)

    sizes = (budget.binding_train, budget.binding_valid, budget.binding_test)
    splits = simulate_splits(make, args.seed, model_index, sizes, train_bg, test_bg)
    x_test = splits.test.one_hot()

    # The PWM baseline: fixed weights, nothing to train.
    pwm = PwmScan(motifs[tf].log_odds())
    pwm_bytes = export_onnx(pwm, length)
    pwm_scores = evaluate.strand_logits(evaluate.cpu_session(pwm_bytes), x_test)
    pwm_metrics = evaluate.task_metrics(splits.test.labels, pwm_scores, (tf,))
    pwm_metrics |= grammar_metrics(splits.test, pwm_scores)
    numpy_scan = np.maximum(
        max_log_odds(x_test, pwm.weight.numpy()[0].T), max_log_odds(reverse_complement(x_test), pwm.weight.numpy()[0].T)
    )
    pwm_metrics["max_abs_error_vs_numpy"] = float(np.abs(pwm_scores[:, 0] - numpy_scan).max())

    torch.manual_seed(torch_seed(args.seed, model_index))
    model = DeepBind()
    result = fit(
        model, splits, budget.binding_epochs, budget.binding_batch, 3e-3, args.seed + model_index, f"deepbind-{tf}"
    )
    deepbind_bytes = export_onnx(model, length)
    scores = evaluate.strand_logits(evaluate.cpu_session(deepbind_bytes), x_test)
    metrics = evaluate.task_metrics(splits.test.labels, scores, (tf,))
    metrics |= grammar_metrics(splits.test, scores)
    metrics |= {f"pwm_{k}": v for k, v in pwm_metrics.items() if k.startswith("au")}
    metrics["max_abs_error_vs_torch"] = onnx_error(model, deepbind_bytes, x_test[:256])
    if not args.quick and metrics["auprc"] <= metrics["pwm_auprc"]:
        raise SystemExit(
            f"deepbind-{tf.lower()}: auPRC {metrics['auprc']:.4f} does not beat the PWM baseline's "
            f"{metrics['pwm_auprc']:.4f}; not writing it"
        )
    pwm_metrics["deepbind_auprc"] = metrics["auprc"]

    named = (tf, grammar.partner)
    grammar_doc = (
        f"bound = >= {simulate.CLUSTER_SIZE} {tf} sites (homotypic cluster) or {tf} + {grammar.partner} "
        f"with the {grammar.partner} {'before' if grammar.partner_first else 'after'} it, gap {grammar.gap} bp, "
        f"{'same' if grammar.partner_strand == 1 else 'opposite'} strand"
    )
    common = {"grammar": grammar_doc, "quick": args.quick}
    write_model_dir(
        args.out,
        binding_spec(
            f"pwm-{tf.lower()}",
            tf,
            length,
            f"PWM log-odds scan baseline for {tf} (JASPAR {motifs[tf].matrix_id}): "
            "fixed convolution, max over positions.",
            f"max over positions of the log2-odds score of {tf}'s PWM on the given strand (not a calibrated logit)",
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
            **common,
            pseudo_frequency=0.01,
            training_seconds=0,
        ),
    )
    write_model_dir(
        args.out,
        binding_spec(
            f"deepbind-{tf.lower()}",
            tf,
            length,
            f"DeepBind-style {tf} binding on 101 bp, trained on the simulated {tf} grammar task "
            "(homotypic clusters and preferred heterotypic pairs vs lone sites, misspaced pairs, decoys).",
            f"{tf} binding logit of the given strand; sigmoid gives the probability",
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
            architecture="DeepBind: conv 16x24 (N-padded), ReLU, global max+mean pool, FC 32, dropout 0.5, 1 logit",
            best_epoch=result.best_epoch,
            epochs=budget.binding_epochs,
            training_seconds=f"{result.seconds:.1f}",
        ),
    )
    return {f"deepbind-{tf.lower()}": metrics | {"seconds": result.seconds}, f"pwm-{tf.lower()}": pwm_metrics}


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
    x_test = splits.test.one_hot()
    x_test_rc = reverse_complement(x_test)
    pwm_scores = np.stack(
        [
            np.maximum(max_log_odds(x_test, motifs[t].log_odds()), max_log_odds(x_test_rc, motifs[t].log_odds()))
            for t in MULTITASK_TASKS
        ],
        axis=1,
    )
    pwm_metrics = evaluate.task_metrics(splits.test.labels, pwm_scores, MULTITASK_TASKS, prefix="pwm_")

    torch.manual_seed(torch_seed(args.seed, model_index))
    model = DilatedMultitask(len(MULTITASK_TASKS))
    result = fit(
        model, splits, budget.multitask_epochs, budget.multitask_batch, 3e-3, args.seed + model_index, MULTITASK_NAME
    )
    model_bytes = export_onnx(model, length)
    scores = evaluate.strand_logits(evaluate.cpu_session(model_bytes), x_test)
    metrics = evaluate.task_metrics(splits.test.labels, scores, MULTITASK_TASKS)
    metrics |= {k: v for k, v in pwm_metrics.items() if k.startswith(("pwm_auroc", "pwm_auprc"))}
    metrics["max_abs_error_vs_torch"] = onnx_error(model, model_bytes, x_test[:64])
    if not args.quick and metrics["auprc"] <= metrics["pwm_auprc"]:
        raise SystemExit(f"{MULTITASK_NAME}: mean auPRC {metrics['auprc']:.4f} does not beat the PWM scans' "
                         f"{metrics['pwm_auprc']:.4f}; not writing it")  # fmt: skip

    spec = {
        "name": MULTITASK_NAME,
        "family": "binding",
        "description": "DeepSEA/Basenji-style dilated residual CNN predicting 10 TFs at once from 1000 bp, "
        "trained on simulated homotypic clusters and preferred heterotypic pairs.",
        "inputs": [
            {"name": "x", "dtype": "float32", "shape": [-1, length, 4], "description": INPUT_DOC.format(length=length)}
        ],
        "outputs": [
            {
                "name": "logit",
                "dtype": "float32",
                "shape": [-1, len(MULTITASK_TASKS)],
                "labels": list(MULTITASK_TASKS),
                "description": "binding logit per TF for the given strand; sigmoid gives the probability",
            }
        ],
        "preprocessing": {"sequence_length": length, **PREPROCESSING},
        "batching": {"max_batch_size": 256, "max_queue_delay_us": 0},
    }
    named = (*MULTITASK_TASKS, *(g.partner for g in GRAMMARS.values() if g.partner not in MULTITASK_TASKS))
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
            grammar=f"per TF: bound = >= {simulate.CLUSTER_SIZE} sites within {simulate.CLUSTER_SPAN} bp, "
            "or the preferred pair (CTCF+YY1, GATA1+TAL1::TCF3, SPI1+CEBPA)",
            architecture="conv 64x15 + BN + ReLU + maxpool 8, 4 residual dilated convs (64x3, dilation 1,2,4,8) "
            "+ BN + ReLU, global max+mean pool, dropout 0.2, linear 10",
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
        results |= train_binding(tf, index, args, budget, motifs, train_bg, test_bg)
    results |= train_multitask(args, budget, motifs, train_bg, test_bg)
    elapsed = time.perf_counter() - start

    print(f"\n{'model':<16} {'auROC':>7} {'auPRC':>7} {'PWM auPRC':>10} {'train s':>8}")
    for name, m in results.items():
        pwm = m.get("pwm_auprc", float("nan"))
        print(f"{name:<16} {m['auroc']:7.4f} {m['auprc']:7.4f} {pwm:10.4f} {m.get('seconds', 0.0):8.1f}")
    print(f"wrote {len(results)} models to {args.out} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
