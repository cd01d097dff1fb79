"""A self-contained HTML report of one experiment: one file, no external assets.

Plots are matplotlib PNGs embedded as base64 ``data:`` URIs, drawn on bare
:class:`matplotlib.figure.Figure` objects (no pyplot, no GUI backend, nothing
left open). Every string that comes from the results or the config is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from poisonlab.errors import PoisonlabError

__all__ = [
    "DetectorView",
    "figure_to_png",
    "fine_pruning_png",
    "purification_png",
    "render_report",
    "strip_histogram_png",
    "trigger_png",
    "write_report",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GROUP_ORDER = ("victim", "twin", "attack", "purification", "defense", "detection")
_POISON_COLOURS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_CLEAN_COLOUR = "tab:blue"
_ALL_POISONED = "all poisoned"


# --------------------------------------------------------------------------- data


@dataclass
class DetectorView:
    """What the report shows for one training-set detector."""

    name: str  # e.g. "tracin_self"
    scores: np.ndarray  # (N,) float, higher = more suspicious
    groups: dict[str, np.ndarray]  # name -> bool mask (N,); the key "clean" marks unpoisoned rows
    threshold: float | None  # the flagging threshold in force (vertical line on the histogram)
    top_images: np.ndarray  # (k, C, H, W) float in [0, 1], most suspicious first; C is 1 or 3
    top_captions: list[str]  # k captions, already formatted by the caller
    top_poisoned: np.ndarray  # (k,) bool: poisoned ones get a red frame/title, clean ones green

    def __post_init__(self) -> None:
        where = f"detector {self.name!r}"
        self.name = str(self.name)
        self.scores = np.asarray(self.scores, dtype=float).reshape(-1)
        n = self.scores.shape[0]
        groups: dict[str, np.ndarray] = {}
        for key, mask in dict(self.groups or {}).items():
            m = np.asarray(mask)
            if m.shape != (n,):
                raise PoisonlabError(f"{where}: group {key!r} mask has shape {m.shape}, expected ({n},)")
            groups[str(key)] = m.astype(bool)
        self.groups = groups
        if self.threshold is not None:
            self.threshold = float(self.threshold)
        imgs = np.asarray(self.top_images if self.top_images is not None else np.zeros((0, 1, 1, 1)), float)
        if imgs.ndim == 3:  # (k, H, W): greyscale without a channel axis
            imgs = imgs[:, None]
        if imgs.size == 0 and imgs.ndim != 4:
            imgs = np.zeros((0, 1, 1, 1))
        if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
            raise PoisonlabError(
                f"{where}: top_images has shape {imgs.shape}, expected (k, C, H, W) with C 1 or 3"
            )
        self.top_images = imgs
        k = imgs.shape[0]
        captions = [str(c) for c in (self.top_captions or [])]
        if len(captions) != k:
            raise PoisonlabError(f"{where}: {len(captions)} top_captions for {k} top_images")
        self.top_captions = captions
        poisoned = np.asarray([] if self.top_poisoned is None else self.top_poisoned, dtype=bool).reshape(-1)
        if poisoned.shape != (k,):
            raise PoisonlabError(f"{where}: top_poisoned has {poisoned.shape[0]} entries for {k} top_images")
        self.top_poisoned = poisoned


# --------------------------------------------------------------------------- figures


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
    colours[_ALL_POISONED] = "black"
    return colours


def _histogram_png(view: DetectorView) -> bytes | None:
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
            label=f"threshold = {_fmt_num(view.threshold)}",
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


def _roc_curves(view: DetectorView) -> tuple[list[_Curve], str | None]:
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
        candidates.append((_ALL_POISONED, all_poisoned))
    if not candidates:
        return [], "no ROC: there are no poisoned rows"
    curves = []
    for key, mask in candidates:
        sel = mask | clean
        y_true, y_score = mask[sel], s[sel]
        fpr, tpr, _ = roc_curve(y_true, y_score)
        curves.append((key, fpr, tpr, float(roc_auc_score(y_true, y_score)), int(mask.sum())))
    return curves, None


def _roc_png(view: DetectorView, curves: list[_Curve]) -> bytes:
    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.add_subplot()
    colours = _group_colours(view)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
    for key, fpr, tpr, auc, n in curves:
        style = "--" if key == _ALL_POISONED else "-"
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


def _image_grid_png(view: DetectorView) -> bytes | None:
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


def _history_png(history: list[dict]) -> bytes | None:
    rows = [h for h in history if isinstance(h, Mapping)]
    if not rows:
        return None
    keys: list[str] = []
    for h in rows:
        for key, value in h.items():
            if key != "epoch" and key not in keys and _is_number(value):
                keys.append(str(key))
    panels = {
        "loss": [k for k in keys if "loss" in k.lower()],
        "accuracy": [k for k in keys if "acc" in k.lower()],
        "learning rate": [k for k in keys if k.lower() in ("lr", "learning_rate")],
    }
    panels = {title: ks for title, ks in panels.items() if ks}
    if not panels:
        return None
    x = np.array([float(h["epoch"]) if _is_number(h.get("epoch")) else i + 1 for i, h in enumerate(rows)])
    fig = Figure(figsize=(4.2 * len(panels), 3.3))
    for j, (title, ks) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for key in ks:
            y = np.array([float(h[key]) if _is_number(h.get(key)) else np.nan for h in rows])
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


def fine_pruning_png(name: str, steps: list[dict], cutoff=None, target_success=None, kept=None) -> bytes:
    """Fine-pruning: clean accuracy and attack success after each prune + fine-tune step."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    x = np.array([100 * float(s.get("pruned_fraction", 0.0)) for s in steps])
    for key, label, colour in (
        ("clean_accuracy", "clean accuracy", _CLEAN_COLOUR),
        ("attack_success", "attack success", "tab:red"),
    ):
        y = np.array([100 * float(s[key]) if _is_number(s.get(key)) else np.nan for s in steps])
        if np.isfinite(y).any():
            ax.plot(x, y, marker="o", markersize=3, linewidth=1.5, color=colour, label=label)
    if _is_number(cutoff):
        ax.axhline(100 * cutoff, color=_CLEAN_COLOUR, linestyle=":", linewidth=1, label="accuracy cutoff")
    if _is_number(target_success):
        ax.axhline(100 * target_success, color="tab:red", linestyle=":", linewidth=1, label="success target")
    if kept is not None and 0 <= kept < len(x):
        ax.axvline(x[kept], color="black", linestyle="--", linewidth=1, label="model kept")
    ax.set_xlabel("channels of the last conv layer pruned (%)")
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


# --------------------------------------------------------------------------- formatting


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _fmt_num(v: Any) -> str:
    """Numbers with 4 significant digits (integral values as integers); anything else as text."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):d}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "–"
        if math.isinf(f):
            return "∞" if f > 0 else "−∞"
        if f.is_integer() and 1 < abs(f) < 1e6:  # counts stored as floats
            return f"{int(f):d}"
        text = f"{f:#.4g}"  # 4 significant digits, trailing zeros kept: 1.000, 0.9500
        return text[:-1] if text.endswith(".") else text
    return str(v)


def _fmt_std(v: Any) -> str:
    if not _is_number(v) or not math.isfinite(float(v)):
        return ""
    return f"± {float(v):.2g}"


def _fmt_seconds(v: Any) -> str:
    if not _is_number(v) or not math.isfinite(float(v)):
        return _fmt_num(v)
    s = float(v)
    if s < 60:
        return f"{s:.3g} s"
    if s < 3600:
        return f"{s:.1f} s ({int(s // 60)} min {int(s % 60):02d} s)"
    return f"{s:.0f} s ({int(s // 3600)} h {int(s % 3600 // 60):02d} min)"


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _plain(obj: Any) -> Any:
    """Config values as plain YAML/JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if obj is None or isinstance(obj, (str, int, float)):
        return obj
    if hasattr(obj, "model_dump"):  # a pydantic model
        return _plain(obj.model_dump())
    return str(obj)


def _config_text(config: Any) -> str:
    plain = _plain(config if config is not None else {})
    try:
        import yaml

        return yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, allow_unicode=True)
    except Exception:  # noqa: BLE001 - JSON is always a fine fallback
        return json.dumps(plain, indent=2, default=str)


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", s).strip("-") or "x"


# --------------------------------------------------------------------------- sections


def _metrics_section(results: Mapping) -> str:
    metrics = _flatten(results.get("metrics") or {})
    if not metrics:
        return "<p class='note'>No metrics recorded.</p>"
    stds = _flatten(results.get("metrics_std") or {})
    has_std = any(_fmt_std(v) for v in stds.values())
    oracle = set(results.get("oracle_metrics") or ())
    grouped: dict[str, list[str]] = {}
    for name in metrics:
        grouped.setdefault(name.split(".", 1)[0], []).append(name)
    order = [g for g in _GROUP_ORDER if g in grouped] + [g for g in grouped if g not in _GROUP_ORDER]
    ncols = 3 if has_std else 2
    head = "<tr><th>metric</th><th>mean</th>" + ("<th>std</th>" if has_std else "") + "</tr>"
    body = []
    for g in order:
        body.append(f"<tr class='group'><th colspan='{ncols}'>{_e(g)}</th></tr>")
        for name in grouped[g]:
            mark = " <span class='oracle' title='reads ground truth beyond scoring'>oracle</span>"
            label = _e(name) + (mark if name in oracle else "")
            row = f"<tr><td class='name'>{label}</td><td class='num'>{_e(_fmt_num(metrics[name]))}</td>"
            if has_std:
                row += f"<td class='num std'>{_e(_fmt_std(stds.get(name)))}</td>"
            body.append(row + "</tr>")
    trials = results.get("trials")
    caption = ""
    if _is_number(trials) and has_std:
        caption = f"<caption>mean ± std over {_e(_fmt_num(trials))} trials</caption>"
    elif _is_number(trials):
        caption = f"<caption>{_e(_fmt_num(trials))} trial(s)</caption>"
    table = f"<table class='metrics'>{caption}<thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
    reasons = results.get("oracles") or {}
    if not oracle and not reasons:
        return table
    items = "".join(f"<li><code>{_e(k)}.*</code>: {_e(v)}</li>" for k, v in reasons.items())
    items += (
        "<li><code>*.recall_at_budget</code>: flags as many rows as there are true poisons</li>"
        if any(k.endswith("recall_at_budget") for k in oracle)
        else ""
    )
    return (
        "<p class='note'>Metrics marked <span class='oracle'>oracle</span> read ground truth beyond scoring "
        f"(evaluation-only; no real defender has them):</p><ul class='notes'>{items}</ul>{table}"
    )


def _headline_section(results: Mapping) -> str:
    """What a reader takes in at a glance: per attack its net success, per detector its recall and precision
    with 1% / 5% of the rows flagged and AUROC, per defense / purifier / input detector the success before
    and after and the accuracy it cost; oracle numbers marked. Empty when the run measured none of these."""
    m = _flatten(results.get("metrics") or {})
    se = _flatten(results.get("metrics_se") or {})
    oracle = set(results.get("oracle_metrics") or ())

    def cell(key: str, scale: float = 100.0, signed: bool = False) -> str:
        """A percentage with one decimal (scale 100) or a raw value with three (scale 1, AUROC)."""
        value = m.get(key)
        if not _is_number(value) or not math.isfinite(float(value)):
            return "<td class='num'>–</td>"
        fmt = (".1f" if scale == 100.0 else ".3f") if not signed else ("+.1f" if scale == 100.0 else "+.3f")
        text = format(scale * float(value), fmt)
        err = se.get(key)
        if _is_number(err) and math.isfinite(float(err)) and float(err) > 0:
            text += " ± " + format(scale * float(err), fmt.lstrip("+"))
        mark = " <span class='oracle' title='reads ground truth beyond scoring'>oracle</span>"
        return f"<td class='num'>{_e(text)}{mark if key in oracle else ''}</td>"

    def ids(prefix: str, suffixes: tuple[str, ...]) -> list[str]:
        out = []
        for key in m:
            for suffix in suffixes:
                if key.startswith(prefix) and key.endswith("." + suffix):
                    ident = key[len(prefix) : -len(suffix) - 1]
                    if ident and "." not in ident and ident not in out:
                        out.append(ident)
        return out

    def table(head: list[str], rows: list[str]) -> str:
        th = "".join(f"<th>{_e(h)}</th>" for h in head)
        return f"<table class='metrics'><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"

    parts = []
    if "victim.clean_accuracy" in m:
        parts.append(
            "<p>Clean accuracy, %: victim "
            + _e(f"{100 * m['victim.clean_accuracy']:.1f}")
            + (f", clean twin {100 * m['twin.clean_accuracy']:.1f}" if "twin.clean_accuracy" in m else "")
            + ".</p>"
        )
    rows = []
    for ident in ids("attack.", ("success", "success_rate")):
        key = "success" if f"attack.{ident}.success" in m else "success_rate"
        rows.append(
            f"<tr><td class='name'>{_e(ident)}</td>{cell(f'attack.{ident}.{key}')}"
            f"{cell(f'attack.{ident}.twin_{key}')}{cell(f'attack.{ident}.net_{key}', signed=True)}</tr>"
        )
    if rows:
        parts.append("<h3>Attacks: success, %</h3>" + table(["attack", "victim", "clean twin", "net"], rows))
    rows = []
    for ident in ids("detection.", ("auroc",)):
        d = f"detection.{ident}"
        keys = ("recall_at_1pct", "precision_at_1pct", "recall_at_5pct", "precision_at_5pct")
        cells = "".join(cell(f"{d}.{k}") for k in keys)
        cells += cell(f"{d}.auroc", 1.0) + cell(f"{d}.recall") + cell(f"{d}.flagged_fraction")
        rows.append(f"<tr><td class='name'>{_e(ident)}</td>{cells}</tr>")
    if rows:
        head = ["detector", "recall @1%", "precision @1%", "recall @5%", "precision @5%", "AUROC",
                "recall @threshold", "flagged @threshold"]  # fmt: skip
        title = "<h3>Detectors: poisons found with 1% / 5% of the rows flagged, %</h3>"
        parts.append(title + table(head, rows))
    rows = []
    for ident in ids("defense.", ("attack_success",)):
        d = f"defense.{ident}"
        rows.append(
            f"<tr><td class='name'>{_e(ident)}</td>{cell(f'{d}.attack_success_before')}"
            f"{cell(f'{d}.attack_success')}{cell(f'{d}.net_attack_success', signed=True)}"
            f"{cell(f'{d}.clean_accuracy_before')}{cell(f'{d}.clean_accuracy')}</tr>"
        )
    if rows:
        head = ["defense", "success before", "success after", "net after", "accuracy before", "after"]
        parts.append("<h3>Defenses, %</h3>" + table(head, rows))
    rows = [
        f"<tr><td class='name'>{_e(ident)}</td>{cell(f'{ident}.far')}{cell(f'{ident}.frr')}"
        f"{cell(f'{ident}.auroc', 1.0)}</tr>"
        for ident in ids("", ("far",))
    ]
    if rows:
        head = ["input detector", "triggered inputs passed (FAR)", "clean inputs rejected (FRR)", "AUROC"]
        parts.append("<h3>Input detectors, %</h3>" + table(head, rows))
    rows = []
    for ident in ids("purification.", ("clean_accuracy",)):
        p = f"purification.{ident}"
        for attack in ids("attack.", ("success", "success_rate")):
            key = "success" if f"{p}.{attack}.success" in m else "success_rate"
            rows.append(
                f"<tr><td class='name'>{_e(ident)} / {_e(attack)}</td>{cell(f'attack.{attack}.{key}')}"
                f"{cell(f'{p}.{attack}.{key}')}{cell(f'{p}.{attack}.net_{key}', signed=True)}"
                f"{cell(f'{p}.clean_accuracy')}</tr>"
            )
    if rows:
        head = ["purifier / attack", "success unpurified", "after", "net after", "accuracy after"]
        parts.append("<h3>Purifiers, %</h3>" + table(head, rows))
    if len(parts) <= 1:
        return ""
    return "<section id='headline'><h2>Headline</h2>" + "".join(parts) + "</section>"


def _detector_summary(view: DetectorView, aurocs: dict[str, float]) -> str:
    rows = []
    thr = view.threshold if view.threshold is not None and math.isfinite(view.threshold) else None
    for key, mask in view.groups.items():
        x = view.scores[mask]
        fin = x[np.isfinite(x)]
        mean = _fmt_num(float(fin.mean())) if fin.size else "–"
        flagged = f"{100.0 * float((x >= thr).mean()):.1f}%" if thr is not None and x.size else "–"
        auc = _fmt_num(aurocs[key]) if key in aurocs else "–"
        rows.append(
            f"<tr><td class='name'>{_e(key)}</td><td class='num'>{int(mask.sum())}</td>"
            f"<td class='num'>{_e(mean)}</td><td class='num'>{_e(flagged)}</td>"
            f"<td class='num'>{_e(auc)}</td></tr>"
        )
    if _ALL_POISONED in aurocs:
        rows.append(
            f"<tr><td class='name'>{_ALL_POISONED}</td><td colspan='3'></td>"
            f"<td class='num'>{_e(_fmt_num(aurocs[_ALL_POISONED]))}</td></tr>"
        )
    if not rows:
        return ""
    head = (
        "<tr><th>group</th><th>rows</th><th>mean score</th><th>flagged at threshold</th>"
        "<th>AUROC vs clean</th></tr>"
    )
    thr_text = f"threshold {_e(_fmt_num(thr))}" if thr is not None else "no threshold set"
    return (
        f"<table class='summary'><caption>{len(view.scores)} rows, {thr_text}</caption>"
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _detector_section(view: DetectorView, anchor: str) -> str:
    parts = [f"<section id='{anchor}'><h2>Detector: {_e(view.name)}</h2>"]
    curves, roc_note = _roc_curves(view)
    parts.append(_detector_summary(view, {c[0]: c[3] for c in curves}))
    figs = []
    hist = _histogram_png(view)
    if hist is not None:
        figs.append(
            f"<figure>{_img_tag(hist, f'{view.name} score histogram')}"
            "<figcaption>Score distribution per group (each density-normalised)."
            "</figcaption></figure>"
        )
    else:
        figs.append("<p class='note'>No finite scores to plot.</p>")
    if curves:
        figs.append(
            f"<figure>{_img_tag(_roc_png(view, curves), f'{view.name} ROC')}"
            "<figcaption>ROC of each poisoned group against the clean rows.</figcaption></figure>"
        )
    else:
        figs.append(f"<p class='note'>{_e(roc_note)}.</p>")
    parts.append(f"<div class='figrow'>{''.join(figs)}</div>")
    grid = _image_grid_png(view)
    parts.append(f"<h3>Top {view.top_images.shape[0]} most suspicious rows</h3>")
    if grid is not None:
        alt = f"{view.name} top suspicious: " + "; ".join(view.top_captions)
        n_poisoned = int(view.top_poisoned.sum())
        parts.append(
            f"<figure>{_img_tag(grid, alt)}<figcaption>Most suspicious first; "
            f"<span class='bad'>red</span> = poisoned ({n_poisoned}), "
            f"<span class='good'>green</span> = clean ({len(view.top_poisoned) - n_poisoned})."
            "</figcaption></figure>"
        )
    else:
        parts.append("<p class='note'>No images given.</p>")
    parts.append("</section>")
    return "".join(parts)


def _kv_table(d: Mapping, value_fmt, klass: str, head: tuple[str, str]) -> str:
    rows = "".join(
        f"<tr><td class='name'>{_e(k)}</td><td class='num'>{_e(value_fmt(v))}</td></tr>" for k, v in d.items()
    )
    return (
        f"<table class='{klass}'><thead><tr><th>{_e(head[0])}</th><th>{_e(head[1])}</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d2330;
 max-width:1180px;margin:0 auto;padding:1.2em 1.6em 3em;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #dde1e8;
 padding-bottom:.2em}h3{font-size:1.02em;margin:1.2em 0 .4em;color:#3a4253}
.meta{color:#5b6475;margin:0 0 1em}nav{font-size:.9em;margin-bottom:1em}nav a{margin-right:1em;color:#2a5db0}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}caption{text-align:left;color:#5b6475;
 padding-bottom:.3em}th,td{padding:.25em .8em;border-bottom:1px solid #eceff3;text-align:left}
thead th{border-bottom:2px solid #c9ced8}tr.group th{background:#f2f4f8;font-size:.85em;
 text-transform:uppercase;letter-spacing:.04em;color:#48516a}td.num{text-align:right;
 font-variant-numeric:tabular-nums;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
td.std{color:#5b6475}figure{margin:.4em 0 1em}figcaption{font-size:.85em;color:#5b6475}
img{max-width:100%;height:auto}.figrow{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
.note{color:#8a5a00;background:#fff8e6;border-left:3px solid #e0b040;padding:.4em .8em}
.oracle{font-size:.75em;color:#7a3e00;background:#ffe9c7;border-radius:3px;padding:0 .35em;margin-left:.4em}
.bad{color:#c62828;font-weight:600}.good{color:#2e7d32;font-weight:600}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:.8em 1em;overflow:auto;font-size:.85em}
ul.notes li{margin:.2em 0}footer{margin-top:3em;color:#8a92a3;font-size:.8em}
"""


def render_report(
    results: dict,
    detectors: list[DetectorView],
    *,
    history: list[dict] | None = None,
    extra_figures: dict[str, bytes] | None = None,
) -> str:
    """The whole report as one self-contained HTML page."""
    results = results or {}
    name = str(results.get("name") or "experiment")
    created = str(results.get("created") or _dt.datetime.now().isoformat(timespec="seconds"))
    toc: list[tuple[str, str]] = [("metrics", "Metrics")]
    sections = [f"<section id='metrics'><h2>Metrics</h2>{_metrics_section(results)}</section>"]
    headline = _headline_section(results)
    if headline:
        sections.insert(0, headline)
        toc.insert(0, ("headline", "Headline"))

    notes = results.get("notes") or []
    if isinstance(notes, str):
        notes = [notes]
    if notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes)
        sections.insert(0, f"<section id='notes'><h2>Notes</h2><ul class='notes'>{items}</ul></section>")
        toc.insert(0, ("notes", "Notes"))

    for i, view in enumerate(detectors or []):
        anchor = f"det-{i}-{_slug(view.name)}"
        toc.append((anchor, view.name))
        sections.append(_detector_section(view, anchor))

    if history:
        png = _history_png(history)
        body = (
            f"<figure>{_img_tag(png, 'training history')}</figure>"
            if png is not None
            else "<p class='note'>No plottable values in the training history.</p>"
        )
        sections.append(f"<section id='history'><h2>Training history</h2>{body}</section>")
        toc.append(("history", "Training history"))

    extra = dict(extra_figures or {})
    for i, (title, png) in enumerate(extra.items()):
        anchor = f"fig-{i}-{_slug(str(title))}"
        if isinstance(png, (bytes, bytearray)) and bytes(png[:8]) == PNG_SIGNATURE:
            body = f"<figure>{_img_tag(bytes(png), str(title))}</figure>"
        else:
            body = "<p class='note'>Figure not shown: its data is not a PNG image.</p>"
        sections.append(f"<section id='{anchor}'><h2>{_e(title)}</h2>{body}</section>")
        toc.append((anchor, str(title)))

    timings = _flatten(results.get("timings") or {})
    if timings:
        sections.append(
            "<section id='timings'><h2>Timings</h2>"
            f"{_kv_table(timings, _fmt_seconds, 'timings', ('step', 'time'))}</section>"
        )
        toc.append(("timings", "Timings"))
    versions = _flatten(results.get("versions") or {})
    if versions:
        sections.append(
            "<section id='versions'><h2>Versions</h2>"
            f"{_kv_table(versions, str, 'versions', ('package', 'version'))}</section>"
        )
        toc.append(("versions", "Versions"))
    config = _e(_config_text(results.get("config")))
    sections.append(f"<section id='config'><h2>Resolved config</h2><pre>{config}</pre></section>")
    toc.append(("config", "Config"))

    try:
        from poisonlab import __version__ as version
    except Exception:  # noqa: BLE001
        version = "?"
    nav = "".join(f"<a href='#{a}'>{_e(t)}</a>" for a, t in toc)
    trials = results.get("trials")
    meta = f"created {_e(created)}" + (f" · {_e(_fmt_num(trials))} trial(s)" if _is_number(trials) else "")
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>poisonlab report: {_e(name)} ({_e(created)})</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(name)}</h1><p class='meta'>{meta}</p><nav>{nav}</nav></header>\n"
        + "\n".join(sections)
        + f"\n<footer>poisonlab {_e(version)} report</footer>\n</body>\n</html>\n"
    )


def write_report(
    path: str | os.PathLike,
    results: dict,
    detectors: list[DetectorView],
    *,
    history: list[dict] | None = None,
    extra_figures: dict[str, bytes] | None = None,
) -> None:
    """Render the report and write it atomically (temp file in the same folder, then os.replace)."""
    from poisonlab.results import write_atomic

    write_atomic(path, render_report(results, detectors, history=history, extra_figures=extra_figures))
