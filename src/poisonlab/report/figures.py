"""Every figure of the pages as PNG bytes, drawn on bare :class:`matplotlib.figure.Figure` objects (no
pyplot, no GUI backend, nothing left open)."""

from __future__ import annotations

import io
import math
import sys
import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from poisonlab.report.page import fmt_num, is_number

if TYPE_CHECKING:
    from poisonlab.bench.tables import Table
    from poisonlab.report.run_page import DetectorView

MAX_PLOT_SERIES = 12
ALL_POISONED = "all poisoned"
_POISON_COLOURS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_CLEAN_COLOUR = "tab:blue"


def figure_to_png(fig: Figure, *, dpi: int = 100, close: bool = True) -> bytes:
    """Render a matplotlib figure to PNG bytes (and, for pyplot figures, close it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    if close and "matplotlib.pyplot" in sys.modules:  # bare Figure objects need no closing
        sys.modules["matplotlib.pyplot"].close(fig)
    return buf.getvalue()


def _mpl_text(s: Any) -> str:
    """A string safe as matplotlib text: no mathtext, no legend-hiding leading underscore."""
    s = str(s).replace("$", r"\$")
    return " " + s if s.startswith("_") else s


def _group_colours(view: DetectorView) -> dict[str, str]:
    colours, i = {}, 0
    for key in view.groups:
        if key == "clean":
            colours[key] = _CLEAN_COLOUR
        else:
            colours[key] = _POISON_COLOURS[i % len(_POISON_COLOURS)]
            i += 1
    colours[ALL_POISONED] = "black"
    return colours


def histogram_png(view: DetectorView) -> bytes | None:
    scores = view.scores
    finite = np.isfinite(scores)
    present = {k: m & finite for k, m in view.groups.items() if (m & finite).any()}
    if not present and finite.any():
        present = {"all rows": finite}
    if not present:
        return None
    values = scores[finite]
    lo, hi = float(values.min()), float(values.max())
    log_x = lo > 0 and hi / lo > 1e3
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    if log_x:
        edges = np.geomspace(lo, hi, 61)
        ax.set_xscale("log")
    else:
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            pad = 0.5 * max(1.0, abs(hi)) * 1e-3 if hi != 0 else 0.5
            lo, hi = lo - pad, hi + pad
        edges = np.histogram_bin_edges(values, bins="auto", range=(lo, hi))
        if len(edges) > 101 or len(edges) < 11:
            edges = np.linspace(lo, hi, 51 if len(edges) > 101 else 21)
    colours = _group_colours(view)
    for key, mask in present.items():
        x = scores[mask]
        label = _mpl_text(f"{key} (n={x.size})")
        colour = colours.get(key, "tab:gray")
        kwargs: dict[str, Any] = {"bins": edges, "color": colour, "label": label}
        if log_x:  # equal log-width bins: the fraction per bin is the density in log space
            kwargs["weights"] = np.full(x.size, 1.0 / x.size)
        else:
            kwargs["density"] = True
        ax.hist(x, histtype="stepfilled", alpha=0.25, **kwargs)
        kwargs.pop("label")
        ax.hist(x, histtype="step", linewidth=1.4, **kwargs)
    if view.threshold is not None and math.isfinite(view.threshold) and (not log_x or view.threshold > 0):
        ax.axvline(
            view.threshold,
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"threshold = {fmt_num(view.threshold)}",
        )
    ax.set_xlabel("score (higher = more suspicious)" + (", log scale" if log_x else ""))
    ax.set_ylabel("fraction of group per bin" if log_x else "density")
    title = f"{view.name}: score distribution by group"
    if (~finite).any():
        title += f" ({int((~finite).sum())} non-finite scores not shown)"
    ax.set_title(_mpl_text(title), fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return figure_to_png(fig)


def _roc_inputs(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores usable by sklearn: NaN rows dropped, +-inf mapped just past the finite range."""
    keep = ~np.isnan(scores)
    s = scores.copy()
    finite = np.isfinite(s)
    if finite.any():
        lo, hi = float(s[finite].min()), float(s[finite].max())
    else:
        lo, hi = 0.0, 0.0
    s[np.isposinf(s)] = hi + 1.0
    s[np.isneginf(s)] = lo - 1.0
    return s, keep


_Curve = tuple[str, np.ndarray, np.ndarray, float, int]


def roc_curves(view: DetectorView) -> tuple[list[_Curve], str | None]:
    """The (group, fpr, tpr, auroc, n) curves to draw, or a note on why there are none."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if "clean" not in view.groups:
        return [], 'no ROC: the detector view has no "clean" group'
    s, keep = _roc_inputs(view.scores)
    clean = view.groups["clean"] & keep
    if not clean.any():
        return [], "no ROC: there are no clean rows"
    poisoned_groups = {k: m & keep for k, m in view.groups.items() if k != "clean"}
    all_poisoned = ~view.groups["clean"] & keep
    candidates = [(k, m) for k, m in poisoned_groups.items() if m.any()]
    if all_poisoned.any() and not any(np.array_equal(m, all_poisoned) for _, m in candidates):
        candidates.append((ALL_POISONED, all_poisoned))
    if not candidates:
        return [], "no ROC: there are no poisoned rows"
    curves = []
    for key, mask in candidates:
        sel = mask | clean
        y_true, y_score = mask[sel], s[sel]
        fpr, tpr, _ = roc_curve(y_true, y_score)
        curves.append((key, fpr, tpr, float(roc_auc_score(y_true, y_score)), int(mask.sum())))
    return curves, None


def roc_png(view: DetectorView, curves: list[_Curve]) -> bytes:
    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.add_subplot()
    colours = _group_colours(view)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
    for key, fpr, tpr, auc, n in curves:
        style = "--" if key == ALL_POISONED else "-"
        ax.plot(
            fpr,
            tpr,
            style,
            color=colours.get(key, "tab:gray"),
            linewidth=1.6,
            label=_mpl_text(f"{key} vs clean (AUROC {auc:.4f}, n={n})"),
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (clean flagged)")
    ax.set_ylabel("true positive rate (poison flagged)")
    ax.set_title(_mpl_text(f"{view.name}: ROC"), fontsize=10)
    ax.legend(fontsize=7, loc="lower right", frameon=False)
    ax.grid(alpha=0.3)
    return figure_to_png(fig)


def image_grid_png(view: DetectorView) -> bytes | None:
    imgs = view.top_images
    k = imgs.shape[0]
    if k == 0:
        return None
    ncols = min(k, 8)
    nrows = math.ceil(k / ncols)
    fig = Figure(figsize=(1.65 * ncols, 2.05 * nrows))
    for i in range(k):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        img = np.clip(np.nan_to_num(imgs[i], nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
        colour = "tab:red" if view.top_poisoned[i] else "tab:green"
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        caption = "\n".join(textwrap.wrap(view.top_captions[i], 20)[:3]) or f"#{i + 1}"
        ax.set_title(_mpl_text(caption), fontsize=7, color=colour)
    fig.tight_layout()
    return figure_to_png(fig)


def history_png(history: list[dict]) -> bytes | None:
    rows = [h for h in history if isinstance(h, Mapping)]
    if not rows:
        return None
    keys: list[str] = []
    for h in rows:
        for key, value in h.items():
            if key != "epoch" and key not in keys and is_number(value):
                keys.append(str(key))
    panels = {
        "loss": [k for k in keys if "loss" in k.lower()],
        "accuracy": [k for k in keys if "acc" in k.lower()],
        "learning rate": [k for k in keys if k.lower() in ("lr", "learning_rate")],
        "rows trained on": [k for k in keys if k == "rows"],  # a training-time defense that drops rows
    }
    panels = {title: ks for title, ks in panels.items() if ks}
    if not panels:
        return None
    x = np.array([float(h["epoch"]) if is_number(h.get("epoch")) else i + 1 for i, h in enumerate(rows)])
    fig = Figure(figsize=(4.2 * len(panels), 3.3))
    for j, (title, ks) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for key in ks:
            y = np.array([float(h[key]) if is_number(h.get(key)) else np.nan for h in rows])
            ax.plot(x, y, marker="o", markersize=3, linewidth=1.4, label=_mpl_text(key))
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return figure_to_png(fig)


def _show(ax, img: np.ndarray, title: str, colour: str = "black") -> None:
    img = np.clip(np.nan_to_num(np.asarray(img, float), nan=0.0), 0.0, 1.0)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(_mpl_text("\n".join(textwrap.wrap(title, 22)[:3])), fontsize=7, color=colour)


def trigger_png(
    trigger: np.ndarray,
    poisons: np.ndarray,
    captions: list[str],
    triggered: np.ndarray,
    triggered_captions: list[str],
    originals: np.ndarray | None = None,
) -> bytes:
    """The trigger (pattern and mask), poisoned training rows (and originals) and triggered test images."""
    trigger = np.asarray(trigger, float)
    rows = [("trigger", [(trigger[0] * trigger[1], "pattern x mask"), (trigger[1], "mask (alpha)")])]
    if originals is not None and len(originals):
        named = [(x, "original: " + c.split(" / ")[-1]) for x, c in zip(originals, captions)]
        rows.append(("originals", named))
    rows.append(("poisons", list(zip(poisons, captions))))
    if len(triggered):
        rows.append(("triggered", list(zip(triggered, triggered_captions))))
    rows = [(name, items) for name, items in rows if items]
    ncols = max(len(items) for _, items in rows)
    fig = Figure(figsize=(1.5 * ncols, 1.85 * len(rows)))
    for r, (name, items) in enumerate(rows):
        for c, (img, title) in enumerate(items):
            ax = fig.add_subplot(len(rows), ncols, r * ncols + c + 1)
            _show(
                ax,
                img if np.asarray(img).ndim == 3 else np.asarray(img)[None],
                title,
                "tab:red" if name in ("poisons", "triggered") else "black",
            )
    fig.tight_layout()
    return figure_to_png(fig)


def strip_histogram_png(
    name: str, clean: np.ndarray, triggered: np.ndarray, boundary: float, frr: float | None = None
) -> bytes:
    """STRIP: entropy histograms of clean and triggered inputs with the fitted boundary."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    values = np.concatenate([np.asarray(clean, float), np.asarray(triggered, float)])
    values = values[np.isfinite(values)]
    edges = np.linspace(values.min(), values.max() + 1e-9, 41) if values.size else 10
    for label, x, colour in (("clean", clean, _CLEAN_COLOUR), ("triggered", triggered, "tab:red")):
        x = np.asarray(x, float)
        if x.size:
            ax.hist(x, bins=edges, density=True, alpha=0.35, color=colour, label=f"{label} (n={x.size})")
    if math.isfinite(boundary):
        text = f"boundary {boundary:.4g}" + (f" (FRR {100 * frr:g}%)" if frr is not None else "")
        ax.axvline(boundary, color="black", linestyle="--", linewidth=1.2, label=text)
    ax.set_xlabel("mean prediction entropy over superimposed inputs (low = trojaned)")
    ax.set_ylabel("density")
    ax.set_title(_mpl_text(f"{name}: entropy of clean and triggered inputs"), fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return figure_to_png(fig)


def fine_pruning_png(
    name: str, steps: list[dict], cutoff=None, target_success=None, kept=None, unit: str = "channels"
) -> bytes:
    """Fine-pruning: clean accuracy and attack success after each prune + fine-tune step."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    x = np.array([100 * float(s.get("pruned_fraction", 0.0)) for s in steps])
    for key, label, colour in (
        ("clean_accuracy", "clean accuracy", _CLEAN_COLOUR),
        ("attack_success", "attack success", "tab:red"),
    ):
        y = np.array([100 * float(s[key]) if is_number(s.get(key)) else np.nan for s in steps])
        if np.isfinite(y).any():
            ax.plot(x, y, marker="o", markersize=3, linewidth=1.5, color=colour, label=label)
    if is_number(cutoff):
        ax.axhline(100 * cutoff, color=_CLEAN_COLOUR, linestyle=":", linewidth=1, label="accuracy cutoff")
    if is_number(target_success):
        ax.axhline(100 * target_success, color="tab:red", linestyle=":", linewidth=1, label="success target")
    if kept is not None and 0 <= kept < len(x):
        ax.axvline(x[kept], color="black", linestyle="--", linewidth=1, label="model kept")
    ax.set_xlabel(
        "channels of the last conv layer pruned (%)" if unit == "channels" else "conv weights at zero (%)"
    )
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.set_title(_mpl_text(f"{name}: prune and fine-tune"), fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return figure_to_png(fig)


def purification_png(
    name: str,
    before: np.ndarray,
    after: np.ndarray | None,
    captions: list[str],
    critic_values: list[float] | None = None,
) -> bytes:
    """Untrusted rows before and after purification (and the change), and the critic's value per round."""
    before = np.asarray(before, float)
    has_after = after is not None and len(after) == len(before) and len(before) > 0
    rows = 3 if has_after else 1
    ncols = max(1, len(before))
    curve = bool(critic_values)
    fig = Figure(figsize=(max(1.5 * ncols, 4.0) + (3.6 if curve else 0.0), 1.85 * rows))
    grid = fig.add_gridspec(rows, ncols + (3 if curve else 0))
    for c in range(len(before)):
        _show(fig.add_subplot(grid[0, c]), before[c], "before: " + captions[c])
        if has_after:
            img = np.asarray(after[c], float)
            _show(fig.add_subplot(grid[1, c]), img, "after", "tab:red")
            diff = np.abs(img - before[c]).max(axis=0, keepdims=True)
            top = max(float(diff.max()), 1e-6)
            _show(fig.add_subplot(grid[2, c]), diff / top, f"|change| (max {top:.2f})")
    if curve:
        ax = fig.add_subplot(grid[:, ncols:])
        values = np.asarray(critic_values, float)
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, color="tab:purple")
        ax.set_xlabel("round")
        ax.set_ylabel("critic estimate of W")
        ax.set_title(_mpl_text(f"{name}: Wasserstein estimate"), fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_to_png(fig)


def table_png(table: Table) -> bytes | None:
    """Mean +- SE per row: lines over numeric settings, grouped bars otherwise; None if not worth drawing."""
    if not table.plot or not table.rows or not table.cols or len(table.rows) > MAX_PLOT_SERIES:
        return None
    xs = table.numeric_columns()
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(table.rows)
    for i, row in enumerate(table.rows):
        stats = [table.cells.get((row, c)) for c in table.cols]
        mean = np.array([s.mean * table.scale if s and s.n else np.nan for s in stats])
        err = np.array([s.se * table.scale if s and s.n and math.isfinite(s.se) else 0.0 for s in stats])
        label = " / ".join(table.row_label(row))
        if xs is not None and len(xs) > 1:
            ax.errorbar(xs, mean, yerr=err, marker="o", capsize=3, label=label)
        else:
            pos = np.arange(len(table.cols)) + (i - (len(table.rows) - 1) / 2) * width
            ax.bar(pos, mean, width, yerr=err, capsize=3, label=label)
    if xs is None or len(xs) <= 1:
        ax.set_xticks(
            np.arange(len(table.cols)),
            [table.col_label(c) for c in table.cols],
            rotation=20 if len(table.cols) > 4 else 0,
        )
    ax.set_xlabel(", ".join(table.col_dims) or "")
    ax.set_ylabel(table.metric.replace("$", r"\$"))
    ax.set_title(table.title.replace("$", r"\$"))
    ax.grid(alpha=0.3)
    if len(table.rows) > 1 or table.row_dims:
        ax.legend(
            fontsize=8, title=" / ".join(table.row_dims) or None, loc="upper left", bbox_to_anchor=(1.01, 1)
        )
    return figure_to_png(fig)
