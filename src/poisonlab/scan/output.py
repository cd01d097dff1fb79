"""What a scan writes: scan.csv (one row per training row), results.json (settings, per-detector counts,
the evaluation against ``truth`` when given) and report.html (the most suspicious images with their reasons,
per-class counts, each detector's score histogram and, with ``truth``, ROC and recall at 1% / 5% flagged)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from poisonlab.results import environment, write_atomic
from poisonlab.scan.core import Scan, evidence


def write_csv(result: Scan, path, paths: list[str] | None = None) -> Path:
    """scan.csv: row id (and file path), given and suggested label, each detector's score and flag, the
    loss baseline, the combined statistic, rank and reason."""
    table = result.table()
    if paths is not None:
        for row, file in zip(table, paths):
            row["path"] = file
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    write_atomic(path, buffer.getvalue())
    return Path(path)


def evaluate(result: Scan, truth: np.ndarray) -> dict:
    """Against a ground-truth mask (evaluation only): per score column (poisonlab's
    :func:`~poisonlab.metrics.detection_metrics`) AUROC and recall / precision at 1% and 5% of the rows
    flagged; for a detector with flags, its flagged fraction with their precision and recall."""
    from poisonlab.metrics import detection_metrics

    truth = np.asarray(truth, bool)
    out = {}
    columns = {**result.scores, **result.baseline, "combined": result.combined}
    keys = ("auroc", "recall_at_1pct", "precision_at_1pct", "recall_at_5pct", "precision_at_5pct")
    for name, values in columns.items():
        measured = detection_metrics(values, truth, float(np.max(values)) + 1.0)  # rank metrics only
        entry = {key: measured.get(key) for key in keys}
        if name in result.flags:
            flag = result.flags[name]
            entry["flagged_fraction"] = float(flag.mean())
            entry["flag_precision"] = float(truth[flag].mean()) if flag.any() else None
            entry["flag_recall"] = float(flag[truth].mean()) if truth.any() else None
        out[name] = entry
    return out


def summary(result: Scan, source: str, truth: np.ndarray | None = None) -> dict:
    """results.json's content."""
    flagged = np.any(np.stack(list(result.flags.values())), 0)
    record = {
        "source": source,
        "rows": len(result),
        "settings": result.settings,
        "flagged": {name: int(flag.sum()) for name, flag in result.flags.items()},
        "flagged_by_any": int(flagged.sum()),
        "top": [
            {"row": int(i), "label": result.classes[result.labels[i]], "reason": result.reasons[i]}
            for i in result.order()[:20]
        ],
        "environment": environment(),
    }
    if truth is not None:
        record["evaluation"] = evaluate(result, truth)
        record["evaluation_note"] = "against the --truth mask, read for scoring only"
    return record


def write_json(record: dict, path) -> Path:
    write_atomic(path, json.dumps(record, indent=2, default=float) + "\n")
    return Path(path)


def report_html(result: Scan, images: np.ndarray, source: str, truth: np.ndarray | None = None) -> str:
    """The scan's HTML page (self-contained)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from poisonlab.report.figures import figure_to_png
    from poisonlab.report.page import escape, header, img_tag, page

    order = result.order()[:48]
    cols = 8
    fig, axes = plt.subplots(len(order) // cols + bool(len(order) % cols), cols, figsize=(cols * 1.6, 7))
    for ax in np.atleast_1d(axes).flatten():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).flatten(), order):
        img = images[i].transpose(1, 2, 0)
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        colour = "black" if truth is None else ("#c62828" if truth[i] else "#2e7d32")
        ax.set_title(f"#{i} {result.classes[result.labels[i]]}", fontsize=7, color=colour)
    grid = figure_to_png(fig)
    names = list(result.scores)
    fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names), 2.2))
    for ax, name in zip(np.atleast_1d(axes), names):
        values = result.scores[name]  # the duplicate column's evidence is all or nothing: its similarity
        z = values if name == "duplicate" else evidence(name, values)
        if truth is None:
            ax.hist(z, bins=40, color="#4a6fa5")
        else:
            ax.hist([z[~truth], z[truth]], bins=40, color=["#4a6fa5", "#c62828"], stacked=True)
        ax.set_title(name, fontsize=8)
        ax.set_yscale("log")
    histograms = figure_to_png(fig)
    flagged = np.any(np.stack(list(result.flags.values())), 0)
    per_class = np.bincount(result.labels[flagged], minlength=len(result.classes))
    totals = np.bincount(result.labels, minlength=len(result.classes))
    rows = "".join(
        f"<tr><td>{escape(c)}</td><td>{totals[k]}</td><td>{per_class[k]}</td></tr>"
        for k, c in enumerate(result.classes)
    )
    top = "".join(
        f"<tr><td>{i}</td><td>{escape(result.classes[result.labels[i]])}</td>"
        f"<td>{escape(result.classes[result.suggested[i]])}</td><td>{escape(result.reasons[i])}</td></tr>"
        for i in result.order()[:48]
    )
    detectors = "".join(
        f"<tr><td>{escape(name)}</td><td>{int(result.flags[name].sum())}</td></tr>" for name in names
    )
    body = [
        "<section id='top'><h2>Most suspicious rows</h2>",
        "<p>First 48 rows by the combined rank (largest capped robust z over the detectors, ties by their "
        "agreement)."
        + (" Red: planted poisons of the --truth file (evaluation only)." if truth is not None else "")
        + "</p>",  # fmt: skip
        img_tag(grid, "most suspicious rows"),
        f"<table><tr><th>row</th><th>label</th><th>suggested</th><th>reason</th></tr>{top}</table></section>",
        "<section id='detectors'><h2>Detectors</h2>",
        f"<table><tr><th>detector</th><th>rows flagged</th></tr>{detectors}</table>",
        img_tag(histograms, "score histograms (robust z)"),
        "</section><section id='classes'><h2>Per class</h2>",
        "<table><tr><th>class</th><th>rows</th><th>flagged by any detector</th></tr>",
        f"{rows}</table></section>",
    ]
    if truth is not None:
        evaluation = evaluate(result, truth)
        lines = "".join(
            f"<tr><td>{escape(name)}</td><td>{_fmt(e['auroc'])}</td><td>{_fmt(e['recall_at_1pct'])}</td>"
            f"<td>{_fmt(e['precision_at_1pct'])}</td><td>{_fmt(e['recall_at_5pct'])}</td>"
            f"<td>{_fmt(e['precision_at_5pct'])}</td></tr>"
            for name, e in evaluation.items()
        )
        body += [
            "<section id='evaluation'><h2>Against the ground truth (evaluation only)</h2>",
            "<table><tr><th>scores</th><th>AUROC</th><th>recall at 1% flagged</th><th>precision</th>"
            f"<th>recall at 5% flagged</th><th>precision</th></tr>{lines}</table></section>",
        ]
    meta = escape(f"{source}: {len(result)} rows, {int(flagged.sum())} flagged by at least one detector")
    links = [("top", "Suspicious"), ("detectors", "Detectors"), ("classes", "Per class")]
    if truth is not None:
        links.append(("evaluation", "Evaluation"))
    return page(f"poisonlab scan: {source}", header("poisonlab scan", meta, links), "\n".join(body))


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
