"""The run page: one experiment's results as one self-contained HTML file, no external assets.

Plots are embedded as base64 ``data:`` URIs; every string that comes from the results or the config is
HTML-escaped.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from poisonlab.errors import PoisonlabError
from poisonlab.report.figures import (
    ALL_POISONED,
    histogram_png,
    history_png,
    image_grid_png,
    roc_curves,
    roc_png,
)
from poisonlab.report.page import escape, fmt_num, header, img_tag, is_number, page, slug

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GROUP_ORDER = ("victim", "twin", "attack", "purification", "training_defense", "defense", "detection")


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


# --------------------------------------------------------------------------- formatting


def _fmt_std(v: Any) -> str:
    if not is_number(v) or not math.isfinite(float(v)):
        return ""
    return f"± {float(v):.2g}"


def _fmt_seconds(v: Any) -> str:
    if not is_number(v) or not math.isfinite(float(v)):
        return fmt_num(v)
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
        body.append(f"<tr class='group'><th colspan='{ncols}'>{escape(g)}</th></tr>")
        for name in grouped[g]:
            mark = " <span class='oracle' title='reads ground truth beyond scoring'>oracle</span>"
            label = escape(name) + (mark if name in oracle else "")
            row = f"<tr><td class='name'>{label}</td><td class='num'>{escape(fmt_num(metrics[name]))}</td>"
            if has_std:
                row += f"<td class='num std'>{escape(_fmt_std(stds.get(name)))}</td>"
            body.append(row + "</tr>")
    trials = results.get("trials")
    caption = ""
    if is_number(trials) and has_std:
        caption = f"<caption>mean ± std over {escape(fmt_num(trials))} trials</caption>"
    elif is_number(trials):
        caption = f"<caption>{escape(fmt_num(trials))} trial(s)</caption>"
    table = f"<table class='metrics'>{caption}<thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
    reasons = results.get("oracles") or {}
    if not oracle and not reasons:
        return table
    items = "".join(f"<li><code>{escape(k)}.*</code>: {escape(v)}</li>" for k, v in reasons.items())
    items += (
        "<li><code>*.recall_at_budget</code>: flags as many rows as there are true poisons</li>"
        if any(k.endswith("recall_at_budget") for k in oracle)
        else ""
    )
    return (
        "<p class='note'>Metrics marked <span class='oracle'>oracle</span> read ground truth beyond scoring "
        f"(evaluation-only; no real defender has them):</p><ul class='notes'>{items}</ul>{table}"
    )


def success_keys(results: Mapping, metrics: Mapping) -> dict[str, str]:
    """attack id -> its success metric: results.json's ``success_keys`` (older results: by name)."""
    if "success_keys" in results:
        return dict(results["success_keys"])
    out = {}
    for key in metrics:
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "attack" and parts[2] in ("success", "success_rate"):
            out.setdefault(parts[1], parts[2])
    return out


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
        if not is_number(value) or not math.isfinite(float(value)):
            return "<td class='num'>–</td>"
        fmt = (".1f" if scale == 100.0 else ".3f") if not signed else ("+.1f" if scale == 100.0 else "+.3f")
        text = format(scale * float(value), fmt)
        err = se.get(key)
        if is_number(err) and math.isfinite(float(err)) and float(err) > 0:
            text += " ± " + format(scale * float(err), fmt.lstrip("+"))
        mark = " <span class='oracle' title='reads ground truth beyond scoring'>oracle</span>"
        return f"<td class='num'>{escape(text)}{mark if key in oracle else ''}</td>"

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
        th = "".join(f"<th>{escape(h)}</th>" for h in head)
        return f"<table class='metrics'><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"

    parts = []
    if "victim.clean_accuracy" in m:
        parts.append(
            "<p>Clean accuracy, %: victim "
            + escape(f"{100 * m['victim.clean_accuracy']:.1f}")
            + (f", clean twin {100 * m['twin.clean_accuracy']:.1f}" if "twin.clean_accuracy" in m else "")
            + ".</p>"
        )
    rows = []
    success = success_keys(results, m)
    for ident, key in success.items():
        rows.append(
            f"<tr><td class='name'>{escape(ident)}</td>{cell(f'attack.{ident}.{key}')}"
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
        rows.append(f"<tr><td class='name'>{escape(ident)}</td>{cells}</tr>")
    if rows:
        head = ["detector", "recall @1%", "precision @1%", "recall @5%", "precision @5%", "AUROC",
                "recall @threshold", "flagged @threshold"]  # fmt: skip
        title = "<h3>Detectors: poisons found with 1% / 5% of the rows flagged, %</h3>"
        parts.append(title + table(head, rows))
    rows = []
    for ident in ids("defense.", ("attack_success",)):
        d = f"defense.{ident}"
        rows.append(
            f"<tr><td class='name'>{escape(ident)}</td>{cell(f'{d}.attack_success_before')}"
            f"{cell(f'{d}.attack_success')}{cell(f'{d}.net_attack_success', signed=True)}"
            f"{cell(f'{d}.clean_accuracy_before')}{cell(f'{d}.clean_accuracy')}</tr>"
        )
    if rows:
        head = ["defense", "success before", "success after", "net after", "accuracy before", "after"]
        parts.append("<h3>Defenses, %</h3>" + table(head, rows))
    rows = []
    for ident in ids("training_defense.", ("clean_accuracy",)):
        d = f"training_defense.{ident}"
        for attack, key in success.items():
            rows.append(
                f"<tr><td class='name'>{escape(ident)} / {escape(attack)}</td>"
                f"{cell(f'attack.{attack}.{key}')}{cell(f'{d}.{attack}.{key}')}"
                f"{cell(f'{d}.{attack}.net_{key}', signed=True)}{cell(f'{d}.clean_accuracy')}"
                f"{cell(f'{d}.removal_recall')}{cell(f'{d}.removed_fraction')}"
                f"{cell(f'{d}.poison_weight', 1.0)}</tr>"
            )
    if rows:
        head = ["defense / attack", "success undefended", "defended", "net defended", "accuracy defended",
                "poisons removed", "rows removed", "poisons' mean weight (clean ~1)"]  # fmt: skip
        parts.append("<h3>Training-time defenses, %</h3>" + table(head, rows))
    rows = [
        f"<tr><td class='name'>{escape(ident)}</td>{cell(f'{ident}.far')}{cell(f'{ident}.frr')}"
        f"{cell(f'{ident}.auroc', 1.0)}</tr>"
        for ident in ids("", ("far",))
    ]
    if rows:
        head = ["input detector", "triggered inputs passed (FAR)", "clean inputs rejected (FRR)", "AUROC"]
        parts.append("<h3>Input detectors, %</h3>" + table(head, rows))
    rows = []
    for ident in ids("purification.", ("clean_accuracy",)):
        p = f"purification.{ident}"
        for attack, key in success.items():
            rows.append(
                f"<tr><td class='name'>{escape(ident)} / {escape(attack)}</td>"
                f"{cell(f'attack.{attack}.{key}')}{cell(f'{p}.{attack}.{key}')}"
                f"{cell(f'{p}.{attack}.net_{key}', signed=True)}{cell(f'{p}.clean_accuracy')}</tr>"
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
        mean = fmt_num(float(fin.mean())) if fin.size else "–"
        flagged = f"{100.0 * float((x >= thr).mean()):.1f}%" if thr is not None and x.size else "–"
        auc = fmt_num(aurocs[key]) if key in aurocs else "–"
        rows.append(
            f"<tr><td class='name'>{escape(key)}</td><td class='num'>{int(mask.sum())}</td>"
            f"<td class='num'>{escape(mean)}</td><td class='num'>{escape(flagged)}</td>"
            f"<td class='num'>{escape(auc)}</td></tr>"
        )
    if ALL_POISONED in aurocs:
        rows.append(
            f"<tr><td class='name'>{ALL_POISONED}</td><td colspan='3'></td>"
            f"<td class='num'>{escape(fmt_num(aurocs[ALL_POISONED]))}</td></tr>"
        )
    if not rows:
        return ""
    head = (
        "<tr><th>group</th><th>rows</th><th>mean score</th><th>flagged at threshold</th>"
        "<th>AUROC vs clean</th></tr>"
    )
    thr_text = f"threshold {escape(fmt_num(thr))}" if thr is not None else "no threshold set"
    return (
        f"<table class='summary'><caption>{len(view.scores)} rows, {thr_text}</caption>"
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _detector_section(view: DetectorView, anchor: str) -> str:
    parts = [f"<section id='{anchor}'><h2>Detector: {escape(view.name)}</h2>"]
    curves, roc_note = roc_curves(view)
    parts.append(_detector_summary(view, {c[0]: c[3] for c in curves}))
    figs = []
    hist = histogram_png(view)
    if hist is not None:
        figs.append(
            f"<figure>{img_tag(hist, f'{view.name} score histogram')}"
            "<figcaption>Score distribution per group (each density-normalised)."
            "</figcaption></figure>"
        )
    else:
        figs.append("<p class='note'>No finite scores to plot.</p>")
    if curves:
        figs.append(
            f"<figure>{img_tag(roc_png(view, curves), f'{view.name} ROC')}"
            "<figcaption>ROC of each poisoned group against the clean rows.</figcaption></figure>"
        )
    else:
        figs.append(f"<p class='note'>{escape(roc_note)}.</p>")
    parts.append(f"<div class='figrow'>{''.join(figs)}</div>")
    grid = image_grid_png(view)
    parts.append(f"<h3>Top {view.top_images.shape[0]} most suspicious rows</h3>")
    if grid is not None:
        alt = f"{view.name} top suspicious: " + "; ".join(view.top_captions)
        n_poisoned = int(view.top_poisoned.sum())
        parts.append(
            f"<figure>{img_tag(grid, alt)}<figcaption>Most suspicious first; "
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
        f"<tr><td class='name'>{escape(k)}</td><td class='num'>{escape(value_fmt(v))}</td></tr>"
        for k, v in d.items()
    )
    return (
        f"<table class='{klass}'><thead><tr><th>{escape(head[0])}</th><th>{escape(head[1])}</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


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
        items = "".join(f"<li>{escape(n)}</li>" for n in notes)
        sections.insert(0, f"<section id='notes'><h2>Notes</h2><ul class='notes'>{items}</ul></section>")
        toc.insert(0, ("notes", "Notes"))

    for i, view in enumerate(detectors or []):
        anchor = f"det-{i}-{slug(view.name, anchor=True)}"
        toc.append((anchor, view.name))
        sections.append(_detector_section(view, anchor))

    if history:
        png = history_png(history)
        body = (
            f"<figure>{img_tag(png, 'training history')}</figure>"
            if png is not None
            else "<p class='note'>No plottable values in the training history.</p>"
        )
        sections.append(f"<section id='history'><h2>Training history</h2>{body}</section>")
        toc.append(("history", "Training history"))

    extra = dict(extra_figures or {})
    for i, (title, png) in enumerate(extra.items()):
        anchor = f"fig-{i}-{slug(str(title), anchor=True)}"
        if isinstance(png, (bytes, bytearray)) and bytes(png[:8]) == PNG_SIGNATURE:
            body = f"<figure>{img_tag(bytes(png), str(title))}</figure>"
        else:
            body = "<p class='note'>Figure not shown: its data is not a PNG image.</p>"
        sections.append(f"<section id='{anchor}'><h2>{escape(title)}</h2>{body}</section>")
        toc.append((anchor, str(title)))

    for key, title, fmt, head in (
        ("timings", "Timings", _fmt_seconds, ("step", "time")),
        ("versions", "Versions", str, ("package", "version")),
    ):
        values = _flatten(results.get(key) or {})
        if values:
            table = _kv_table(values, fmt, key, head)
            sections.append(f"<section id='{key}'><h2>{title}</h2>{table}</section>")
            toc.append((key, title))
    config = escape(_config_text(results.get("config")))
    sections.append(f"<section id='config'><h2>Resolved config</h2><pre>{config}</pre></section>")
    toc.append(("config", "Config"))

    try:
        from poisonlab import __version__ as version
    except Exception:  # noqa: BLE001
        version = "?"
    trials = results.get("trials")
    meta = f"created {escape(created)}"
    if is_number(trials):
        meta += f" · {escape(fmt_num(trials))} trial(s)"
    body = "\n".join(sections) + f"\n<footer>poisonlab {escape(version)} report</footer>"
    return page(f"poisonlab report: {name} ({created})", header(name, meta, toc), body)


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
