"""What a model trained on the binding rule can reach on the single-site set: the rule's own
energy E (:mod:`.rule`), used as a score, against the PWM scan and the served model.

    python -m genoserve.training.binding.ceiling [--seed 0] [--models models]

The single-site set (:func:`.evaluate.eval_sets`, built exactly as training builds it from the
seed) holds positives with one planted JASPAR sample, whatever its log-odds, and composition-
matched decoys: site presence, which the PWM scan detects as well as anything can. E is the best
site's log-odds plus the rule's cooperativity bonuses, which background sites in real chr20 DNA
earn for positives and decoys alike; so a model that learned binding exactly scores E's auROC,
not the PWM's. Prints one row per deepbind model: E, PWM, and the model's recorded figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from genoserve.training.binding import evaluate, simulate, train
from genoserve.training.binding.motifs import load_motifs
from genoserve.training.binding.rule import rule_for
from genoserve.training.metrics import auroc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    motifs = load_motifs()
    budget = train.Budget()
    held_out = simulate.Backgrounds.from_fasta(simulate.REFERENCE, simulate.HELD_OUT_REGIONS)
    print("| TF | rule energy E | PWM scan | deepbind model (model.yaml) |")
    print("|---|---|---|---|")
    for index, tf in enumerate(train.BINDING_TFS):
        rng = train.split_rng(args.seed, index, 2)
        test = simulate.simulate_binding(motifs, tf, budget.binding_test, rng, held_out)
        sets = evaluate.eval_sets(
            motifs, tf, test, train.split_rng(args.seed, index, 3), held_out, budget.binding_single_site,
            budget.binding_grammar,
        )  # fmt: skip
        single = sets.single_site
        present = single.labels[:, 0]
        energy = rule_for(tf).energy(single.codes, motifs)
        pwm = evaluate.pwm_scorer([motifs[tf].log_odds()])(single.one_hot())[:, 0]
        spec = yaml.safe_load((args.models / f"deepbind-{tf.lower()}" / "model.yaml").read_text())
        recorded = spec["versions"][-1]["metrics"].get("single_site_auroc", float("nan"))
        print(f"| {tf} | {auroc(present, energy):.4f} | {auroc(present, pwm):.4f} | {recorded:.4f} |", flush=True)


if __name__ == "__main__":
    main()
