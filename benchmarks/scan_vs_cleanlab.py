"""`poisonlab scan` beside cleanlab and the loss baseline on planted poisons, side by side in one run.

For each data set (MNIST and the CIFAR-10 subset, stratified subsets) and each planted family (random and
targeted label flips at two rates, BadNets, blend, and the clean-label families: feature collision,
gradient matching, first-order, Sleeper Agent, one target or trigger each), the poisons are crafted by
poisonlab's own attacks (the clean-label ones against their own surrogate `cnn` trained on the clean
subset), the set is scanned with no ground truth, and every score column is measured against the poison
mask: AUROC, recall and precision at 1% and 5% of the rows flagged, and for thresholded rules the flagged
fraction with its precision and recall.
cleanlab (`find_label_issues`, `get_label_quality_scores`) reads the same out-of-fold probabilities as the
scan's confident-learning column; the loss baseline is the full model's own per-row loss.

    python benchmarks/scan_vs_cleanlab.py [--data-root DIR] [--rows N] [--epochs E] [--families A,B]

Writes benchmarks/results/scan.md. Needs the `bench` extra (cleanlab).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import add_data_root, command_line, provenance, write_result

from poisonlab.attacks import (
    BadNets,
    Blend,
    FeatureCollision,
    FirstOrder,
    GradientMatching,
    RandomLabelFlip,
    SleeperAgent,
    TargetedLabelFlip,
)
from poisonlab.attacks.base import train_clean_model
from poisonlab.bench.tables import markdown_table
from poisonlab.data import load_dataset, stratified_subset
from poisonlab.metrics import detection_metrics
from poisonlab.scan import scan
from poisonlab.scan.output import evaluate
from poisonlab.training import TrainConfig, accuracy

HERE = Path(__file__).resolve().parent
# name -> attack, given whether the data are colour images (flips and crops only make sense there)
FAMILIES = {
    "label flip 10%": lambda rgb: RandomLabelFlip(fraction=0.1),
    "label flip 3%": lambda rgb: RandomLabelFlip(fraction=0.03),
    "targeted flip 3->9 (10% of 3s)": lambda rgb: TargetedLabelFlip(fraction=0.1),
    "targeted flip 3->9 (30% of 3s)": lambda rgb: TargetedLabelFlip(fraction=0.3),
    "BadNets 5%": lambda rgb: BadNets(fraction=0.05, target=0),
    "blend 5%": lambda rgb: Blend(fraction=0.05, target=0),
    "feature collision 1%": lambda rgb: FeatureCollision(fraction=0.01, steps=200),
    "gradient matching 1%": lambda rgb: GradientMatching(fraction=0.01, restarts=1, hflip=rgb),
    "first-order 1%": lambda rgb: FirstOrder(fraction=0.01, restarts=1),
    "Sleeper Agent 1%": lambda rgb: SleeperAgent(fraction=0.01, hflip=rgb),
}
EFFECT_HEADER = ["data", "poisons", "rows poisoned", "victim `cnn`", "clean twin"]
HEADER = ["data", "poisons", "scores", "AUROC", "recall @1% (precision)", "recall @5% (precision)",
          "own flags: flagged, precision, recall"]  # fmt: skip


def cleanlab_columns(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 - cleanlab's label quality, cleanlab's issue mask) on the given out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    return 1 - get_label_quality_scores(labels, probs), find_label_issues(labels, probs)


def measure(name: str, entry: dict) -> dict:
    """A row of the table from an :func:`~poisonlab.scan.output.evaluate` entry."""
    flags = None
    if "flagged_fraction" in entry:
        flags = (entry["flagged_fraction"], entry["flag_precision"] or 0.0, entry["flag_recall"])
    return {"scores": name, "auroc": entry["auroc"], 1: (entry["recall_at_1pct"], entry["precision_at_1pct"]),
            5: (entry["recall_at_5pct"], entry["precision_at_5pct"]), "flags": flags}  # fmt: skip


def cells(data_name: str, family: str, r: dict) -> list[str]:
    flags = "-" if r["flags"] is None else "{:.1%}, {:.2f}, {:.2f}".format(*r["flags"])
    return [data_name, family, r["scores"], f"{r['auroc']:.3f}", "{:.2f} ({:.2f})".format(*r[1]),
            "{:.2f} ({:.2f})".format(*r[5]), flags]  # fmt: skip


def effect(attack, poisoned, victim, twin, test) -> tuple[str, str]:
    """What the poisons do to a `cnn` trained on them, beside its twin trained on the clean subset: the
    attack's success (first goal) or, for indiscriminate flips, the test accuracy."""
    key, goal = type(attack).success_key, poisoned.goals[0]
    if key is None:
        return f"accuracy {accuracy(victim, test):.1%}", f"accuracy {accuracy(twin, test):.1%}"
    return tuple(f"{key} {attack.evaluate(m, test, goal)[key]:.0%}" for m in (victim, twin))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(parser)
    parser.add_argument("--rows", type=int, default=5000, help="training rows per data set (stratified)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each model of the scan")
    parser.add_argument("--datasets", default="mnist,cifar10")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated names of FAMILIES")
    parser.add_argument("--out", default=str(HERE / "results" / "scan.md"))
    parser.add_argument("--scores", help="folder to save every set's scores, labels and truth (npz) in")
    args = parser.parse_args()
    families = [f.strip() for f in args.families.split(",")]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    torch.set_num_threads(1)
    table, effects, timings = [], [], []
    for data_name in args.datasets.split(","):
        clean = stratified_subset(load_dataset(data_name, args.data_root, split="train"), args.rows, seed=0)
        test = load_dataset(data_name, args.data_root, split="test")
        config = TrainConfig(epochs=args.epochs, checkpoint_every=max(1, args.epochs // 4),
                             augment=data_name == "cifar10")  # fmt: skip
        twin = train_clean_model("cnn", clean, config, seed=0)
        for family in families:
            start = time.perf_counter()
            attack = FAMILIES[family](clean.input_shape[0] == 3)
            poisoned = attack.craft(clean, generator=torch.Generator().manual_seed(0), test=test)
            craft_seconds = time.perf_counter() - start
            truth = np.zeros(len(poisoned.data), bool)
            truth[poisoned.poison_idx.numpy()] = True
            victim = train_clean_model("cnn", poisoned.data, config, seed=0)
            effects.append([data_name, family, str(len(poisoned.poison_idx)),
                            *effect(attack, poisoned, victim, twin, test)])  # fmt: skip
            print(" | ".join(effects[-1]), flush=True)
            start = time.perf_counter()
            result = scan(poisoned.data, train_config=config, seed=0)
            seconds = time.perf_counter() - start
            timings.append(f"{data_name}, {family}: {seconds:.0f} s (crafting {craft_seconds:.0f} s)")
            evaluation = evaluate(result, truth)
            if args.scores:  # for studying combination rules offline
                Path(args.scores).mkdir(parents=True, exist_ok=True)
                np.savez(Path(args.scores) / f"{data_name} {family}.npz".replace("/", "_"), truth=truth,
                         labels=result.labels, rank=result.rank, loss=result.baseline["loss"],
                         out_of_fold=result.out_of_fold, **result.scores)  # fmt: skip
            rows = [measure(name, evaluation[name]) for name in result.scores]
            rows.append(measure("combined (poisonlab)", evaluation["combined"]))
            quality, issues = cleanlab_columns(result.labels, result.out_of_fold)
            theirs = detection_metrics(quality, truth, float(quality.max()) + 1.0)  # rank metrics only
            theirs.update(flagged_fraction=issues.mean(), flag_precision=truth[issues].mean() if issues.any()
                          else 0.0, flag_recall=issues[truth].mean())  # fmt: skip
            rows.append(measure("cleanlab label quality", theirs))
            rows.append(measure("loss baseline", evaluation["loss"]))
            for r in rows:
                table.append(cells(data_name, family, r))
                print(" | ".join(table[-1]), flush=True)
    lines = [
        "# poisonlab scan beside cleanlab and the loss baseline",
        "",
        provenance(command_line("scan_vs_cleanlab.py", parser, args))
        + " cleanlab "
        + __import__("cleanlab").__version__
        + ".",
        "",
        f"Settings: stratified subsets of {args.rows} training rows; poisons crafted by poisonlab, seed 0 "
        "(`label_flip_random` at 10% / 3% of the rows; `label_flip_targeted` 3 -> 9 at 10% / 30% of the "
        "3s; `badnets` 3x3 checkerboard and `blend` noise at alpha 0.2, 5% of the rows, target class 0; "
        "`feature_collision` (200 steps), `gradient_matching` (1 restart, augmentation), `first_order` and "
        "`sleeper_agent` (8x8 patch, source 1 -> target 0) at 1% of the rows, eps 16/255 (first-order "
        "8/255), one target each, against a surrogate `cnn` trained on the clean subset); "
        f"`scan` with its defaults (model `cnn`, 3 folds, {args.epochs} epochs per model, k = 10, seed 0; "
        "CIFAR with random crop and flip); no ground truth passed to it. cleanlab reads the scan's "
        "out-of-fold probabilities (the same models). 'own flags' = the rule each column thresholds by "
        "itself (cleanlab: `find_label_issues`). Scan time per set: " + "; ".join(timings) + ".",
        "",
        "What the poisons do (a `cnn` trained on the poisoned subset with the scan's schedule, seed 0, "
        "beside its twin trained on the clean subset; success of the first target or trigger):",
        "",
        markdown_table(EFFECT_HEADER, effects),
        "",
        "Detection:",
        "",
        markdown_table(HEADER, table),
    ]
    write_result(args.out, lines)


if __name__ == "__main__":
    main()
