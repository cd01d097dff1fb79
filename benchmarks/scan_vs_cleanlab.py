"""`poisonlab scan` beside cleanlab and the loss baseline on planted poisons, side by side in one run.

For each data set (MNIST and the CIFAR-10 subset, stratified subsets) and each planted family (random label
flips, BadNets), the poisons are crafted by poisonlab's own attacks, the set is scanned with no ground
truth, and every score column is measured against the poison mask: AUROC, recall and precision at 1% and 5%
of the rows flagged, and for thresholded rules the flagged fraction with its precision and recall.
cleanlab (`find_label_issues`, `get_label_quality_scores`) reads the same out-of-fold probabilities as the
scan's confident-learning column; the loss baseline is the full model's own per-row loss.

    python benchmarks/scan_vs_cleanlab.py [--data-root DIR] [--rows N] [--epochs E]

Writes benchmarks/results/scan.md. Needs the `bench` extra (cleanlab).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import add_data_root, command_line, provenance, write_result

from poisonlab.attacks import BadNets, RandomLabelFlip
from poisonlab.bench.tables import markdown_table
from poisonlab.data import load_dataset, stratified_subset
from poisonlab.metrics import detection_metrics
from poisonlab.scan import scan
from poisonlab.scan.output import evaluate
from poisonlab.training import TrainConfig

HERE = Path(__file__).resolve().parent
FAMILIES = {
    "label flip 10%": lambda: RandomLabelFlip(fraction=0.1),
    "BadNets 5%": lambda: BadNets(fraction=0.05, target=0),
}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(parser)
    parser.add_argument("--rows", type=int, default=5000, help="training rows per data set (stratified)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each model of the scan")
    parser.add_argument("--datasets", default="mnist,cifar10")
    parser.add_argument("--out", default=str(HERE / "results" / "scan.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    table, timings = [], []
    for data_name in args.datasets.split(","):
        clean = stratified_subset(load_dataset(data_name, args.data_root, split="train"), args.rows, seed=0)
        for family, make in FAMILIES.items():
            poisoned = make().craft(clean, generator=torch.Generator().manual_seed(0))
            truth = np.zeros(len(poisoned.data), bool)
            truth[poisoned.poison_idx.numpy()] = True
            start = time.perf_counter()
            config = TrainConfig(epochs=args.epochs, checkpoint_every=max(1, args.epochs // 4),
                                 augment=data_name == "cifar10")  # fmt: skip
            result = scan(poisoned.data, train_config=config, seed=0)
            seconds = time.perf_counter() - start
            timings.append(f"{data_name}, {family}: {seconds:.0f} s")
            evaluation = evaluate(result, truth)
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
        f"Settings: stratified subsets of {args.rows} training rows; poisons crafted by poisonlab "
        "(`label_flip_random` at 10% of the rows, `badnets` at 5% with a 3x3 patch, target class 0); "
        f"`scan` with its defaults (model `cnn`, 3 folds, {args.epochs} epochs per model, k = 10, seed 0; "
        "CIFAR with random crop and flip); no ground truth passed to it. cleanlab reads the scan's "
        "out-of-fold probabilities (the same models). 'own flags' = the rule each column thresholds by "
        "itself (cleanlab: `find_label_issues`). Scan time per set: " + "; ".join(timings) + ".",
        "",
        markdown_table(HEADER, table),
    ]
    write_result(args.out, lines)


if __name__ == "__main__":
    main()
