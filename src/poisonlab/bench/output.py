"""Bench outputs from a results database: tables as Markdown and CSV, every trial as CSV, one HTML page.

:func:`write_outputs` reads a consistent snapshot of the store, so it works during a run (pending cells
show as missing or with fewer trials, marked ``(n=k)``).
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from poisonlab.bench.store import ResultStore, StoredMatrix
from poisonlab.bench.tables import NO_DATA, Table, build_tables
from poisonlab.report import figure_to_png
from poisonlab.results import check_output_dir, write_atomic

MAX_PLOT_SERIES = 12
OUTPUT_FILES, OUTPUT_FOLDERS = ("report.html", "tables.md"), ("tables", "trials")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#1f2430}h1{margin-bottom:.2em}.meta{color:#5a6270}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}th,td{border:1px solid #d6dae1;
padding:.3em .6em;text-align:right}th{background:#f2f4f7}td.lab,th.lab{text-align:left}
.bad{color:#c62828}pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:.8em 1em;overflow:auto;
font-size:.85em}.tag{display:inline-block;padding:.1em .5em;border-radius:.3em;background:#eef1f6}
img{max-width:100%}nav a{margin-right:1em}.paper{background:#fbf7ea;color:#5a4a1a}
"""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "table"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


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


def _html_table(table: Table) -> str:
    if not table.rows:
        return f"<p class='meta'>{_e(NO_DATA)}</p>"
    full = table.full_n()
    columns = table.columns()
    head = "".join(f"<th class='lab'>{_e(h)}</th>" for h in table.row_header())
    head += "".join(f"<th{' class=paper' if p else ''}>{_e(h)}</th>" for h, _, p in columns)
    body = []
    for row in table.rows:
        tds = "".join(f"<td class='lab'>{_e(v)}</td>" for v in table.row_label(row))
        for _, c, p in columns:
            tds += f"<td{' class=paper' if p else ''}>{_e(table.cell_text(row, c, p, full))}</td>"
        body.append(f"<tr>{tds}</tr>")
    note = "".join(f"<p class='meta'>{_e(n)}</p>" for n in table.notes())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def _counts(data: StoredMatrix) -> dict[str, int]:
    ok = sum(r["status"] == "ok" for r in data.trials)
    failed = sum(r["status"] != "ok" for r in data.trials)
    return {
        "cells": len(data.cells),
        "trials": data.expected(),
        "ok": ok,
        "failed": failed,
        "pending": data.expected() - ok - failed,
    }


def _matrix_html(data: StoredMatrix, tables: list[Table], pngs: dict[int, bytes]) -> str:
    import base64

    c = _counts(data)
    status = (
        f"{c['cells']} cells, {c['trials']} trials: {c['ok']} stored, "
        f"<span class='{'bad' if c['failed'] else ''}'>{c['failed']} failed</span>, {c['pending']} pending"
    )
    if c["pending"]:
        status += " <span class='tag'>incomplete: a run may be in progress</span>"
    parts = [f"<section id='m-{slug(data.name)}'><h2>{_e(data.name)}</h2>"]
    if data.spec.get("description"):
        parts.append(f"<p>{_e(data.spec['description'])}</p>")
    parts.append(
        f"<p class='meta'>{status}. Cells: mean ± standard error over trials "
        "(binomial for 0/1 metrics); (n=k) marks a cell with fewer trials.</p>"
    )
    for i, table in enumerate(tables):
        meta = f"<code>{_e(table.metric)}</code> · {_e(table.layout())}"
        parts.append(f"<h3>{_e(table.title)}</h3><p class='meta'>{meta}</p>")
        parts.append(_html_table(table))
        if i in pngs:
            data64 = base64.b64encode(pngs[i]).decode()
            parts.append(
                f"<figure><img alt='{_e(table.title)}' src='data:image/png;base64,{data64}'></figure>"
            )
    notes = _notes(data)
    if notes:
        items = "".join(f"<li class='bad'>{_e(n)}</li>" for n in notes)
        parts.insert(3 if data.spec.get("description") else 2, f"<h3>Attention</h3><ul>{items}</ul>")
    failed = [r for r in data.trials if r["status"] != "ok"]
    if failed:
        labels = {cell.cell_id: cell.label for cell in data.cells}
        rows = "".join(
            f"<tr><td class='lab'>{_e(labels.get(r['cell_id'], r['cell_id']))}</td><td>{r['trial']}</td>"
            f"<td class='lab bad'>{_e(r['error'])}</td></tr>"
            for r in failed
        )
        parts.append(
            "<h3>Failed trials</h3><table><thead><tr><th class='lab'>cell</th><th>trial</th>"
            f"<th class='lab'>error</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    by_cell: dict[str, list[dict]] = {}
    for r in data.trials:
        by_cell.setdefault(r["cell_id"], []).append(r)
    rows = []
    for cell in data.cells:
        recs = by_cell.get(cell.cell_id, [])
        ok = [r for r in recs if r["status"] == "ok"]
        mean_time = np.mean([r["duration"] for r in ok]) if ok else float("nan")
        rows.append(
            f"<tr><td class='lab'>{_e(cell.label)}</td><td class='lab'><code>{cell.cell_id}</code></td>"
            f"<td>{len(ok)} / {cell.trials}</td><td>{len(recs) - len(ok)}</td>"
            f"<td>{'–' if math.isnan(mean_time) else f'{mean_time:.1f} s'}</td></tr>"
        )
    parts.append(
        "<h3>Cells</h3><table><thead><tr><th class='lab'>cell</th><th class='lab'>id</th>"
        "<th>stored</th><th>failed</th><th>mean trial time</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    spec = yaml.safe_dump(data.spec, sort_keys=False, default_flow_style=None, width=110)
    parts.append(
        f"<details><summary>Matrix spec ({_e(data.source or '')})</summary><pre>{_e(spec)}</pre></details>"
    )
    versions = next((r["versions"] for r in reversed(data.trials) if r.get("versions")), None)
    if versions:
        text = ", ".join(f"{k} {v}" for k, v in versions.items())
        parts.append(f"<p class='meta'>Versions (latest trial): {_e(text)}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _notes(data: StoredMatrix) -> list[str]:
    """What a reader must not miss: cells with failed trials, trials orphaned by an edited matrix, and
    stored rows that could not be read."""
    notes = []
    for cell, failed, ok, error in data.failed_cells():
        what = "every trial failed" if not ok else f"{failed} of {failed + ok} stored trials failed"
        notes.append(f"failed cell {cell.label} ({cell.cell_id}): {what}: {error}")
    if data.orphans:
        trials = sum(o["ok"] + o["failed"] for o in data.orphans)
        names = ", ".join(f"{o['name'] or o['cell_id']} ({o['ok'] + o['failed']})" for o in data.orphans[:5])
        more = f" and {len(data.orphans) - 5} more" if len(data.orphans) > 5 else ""
        notes.append(
            f"{trials} stored trial(s) of {len(data.orphans)} cell(s) no longer in matrix {data.name!r} "
            f"(it was edited and rerun under the same name): {names}{more}; not in these tables"
        )
    notes += [f"unreadable row: {text}" for text in data.skipped]
    return notes


def _trials_csv(data: StoredMatrix) -> str:
    axes = list(data.spec.get("axes", {}))
    labels = {c.cell_id: c.labels for c in data.cells}
    metrics = list(dict.fromkeys(k for r in data.trials for k in (r["metrics"] or {})))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["cell_id", *axes, "trial", "seed", "status", "duration", "error", *metrics])
    for r in data.trials:
        m = r["metrics"] or {}
        cell = labels.get(r["cell_id"], {})
        writer.writerow(
            [
                r["cell_id"],
                *(cell.get(a, "") for a in axes),
                r["trial"],
                r["seed"],
                r["status"],
                r["duration"],
                r["error"] or "",
                *(_num(m.get(k)) for k in metrics),
            ]
        )
    return buf.getvalue()


def _num(value) -> str:
    return "" if value is None else repr(value)


def _provenance(data: StoredMatrix) -> str:
    """Date range, machine, versions, threads, device and commits of a matrix's stored ok trials."""
    ok = [r for r in data.trials if r["status"] == "ok"]
    envs = [r["versions"] for r in ok if r.get("versions")]
    days = sorted({str(r["finished"])[:10] for r in ok if r.get("finished")})
    when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}" if days else "no trial stored yet"

    def distinct(key: str) -> str:
        return ", ".join(dict.fromkeys(str(e.get(key)) for e in envs if e.get(key) is not None)) or "unknown"

    if not envs:
        return f"Date: {when}."
    return (
        f"Date: {when}. Machine: {distinct('machine')}, {distinct('cpus')} cores, {distinct('device')}, "
        f"Python {distinct('python')}, torch {distinct('torch')} with {distinct('torch_threads')} thread(s) "
        f"per trial, numpy {distinct('numpy')}, poisonlab {distinct('poisonlab')} at commit(s) "
        f"{distinct('git_commit')}."
    )


def regenerate_command(data: StoredMatrix, result: str | Path, data_root: str | None = None) -> str:
    """The one command that reruns (or resumes) a matrix and rewrites its result file."""
    parts = ["poisonlab bench", str(data.source or f"{data.name}.yaml")]
    if data.spec.get("trials"):
        parts.append(f"--trials {data.spec['trials']}")
    uses_files = any((c.config.get("data") or {}).get("name", "digits") != "digits" for c in data.cells)
    if uses_files:
        parts.append(f"--data-root {data_root or '$POISONLAB_DATA'}")
    parts.append(f"--result {result}")
    return " ".join(parts)


def write_result_file(data: StoredMatrix, path: str | Path, command: str) -> Path:
    """One matrix as a benchmark result file: heading, provenance, the regenerating ``command``, the paper
    and its setting, the matrix's notes, every table (ours beside the paper's numbers) and cell times."""
    spec = data.spec
    c = _counts(data)
    lines = [f"# {spec.get('title') or spec.get('description') or data.name}", ""]
    if spec.get("title") and spec.get("description"):
        lines += [spec["description"], ""]
    lines += [
        _provenance(data),
        "",
        f"Regenerate (resumes from the stored trials): `{command}`.",
        "",
        f"{c['cells']} cells, {c['trials']} trials: {c['ok']} stored, {c['failed']} failed, {c['pending']} "
        "pending. Cells: mean ± standard error over trials (binomial for 0/1 metrics); trial t of every "
        "cell is seeded by seed + t; (n=k) marks a cell with fewer trials.",
        "",
    ]
    reference = spec.get("reference") or {}
    if reference:
        lines += [f"Paper: {reference['source']}."]
        if reference.get("setting"):
            lines += ["", f"The paper's setting: {reference['setting']}"]
        lines += [""]
    if spec.get("notes"):
        lines += [spec["notes"].strip(), ""]
    notes = _notes(data)
    if notes:
        lines += ["**Attention:**", "", *(f"- {n}" for n in notes), ""]
    for table in build_tables(data):
        lines += [f"## {table.title}", "", f"`{table.metric}` ({table.layout()})", "", table.markdown(), ""]
    by_cell: dict[str, list[dict]] = {}
    for r in data.trials:
        if r["status"] == "ok" and r.get("duration") is not None:
            by_cell.setdefault(r["cell_id"], []).append(r)
    lines += [
        "## Time per trial",
        "",
        "| cell | trials | mean time (s) | largest stages (mean s) |",
        "|---|---|---|---|",
    ]
    for cell in data.cells:
        recs = by_cell.get(cell.cell_id, [])
        mean = f"{np.mean([r['duration'] for r in recs]):.0f}" if recs else "–"
        stages: dict[str, list[float]] = {}
        for r in recs:
            for key, value in (r.get("timings") or {}).items():
                if key != "total" and isinstance(value, int | float):
                    stages.setdefault(key, []).append(float(value))
        top = sorted(((np.mean(v), k) for k, v in stages.items()), reverse=True)[:4]
        largest = ", ".join(f"{k} {v:.0f}" for v, k in top) or "–"
        lines.append(f"| {cell.label} | {len(recs)} / {cell.trials} | {mean} | {largest} |")
    path = Path(path)
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def write_outputs(
    db: str | Path,
    out: str | Path | None = None,
    matrix: str | None = None,
    *,
    warnings: list | None = None,
    result: tuple[str | Path, str] | None = None,
) -> list[Path]:
    """Write report.html, tables.md, tables/*.csv and trials/*.csv for the matrices stored in ``db`` and,
    with ``result`` = (path, command), the one ``matrix``'s result file (:func:`write_result_file`).

    Failed cells, trials orphaned by an edited matrix and unreadable rows are listed in tables.md and the
    page, and appended to ``warnings`` (one line each) when it is given.
    """
    db = Path(db)
    out = Path(out) if out is not None else db.parent
    check_output_dir(out, "--out", files=OUTPUT_FILES, folders=OUTPUT_FOLDERS)
    with ResultStore(db, create=False) as store:
        names = [matrix] if matrix else store.matrices()
        snapshots = [store.load(n) for n in names]
    if not snapshots:
        from poisonlab.errors import PoisonlabError

        raise PoisonlabError(f"{db}: holds no matrix yet")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    md = [f"# Benchmark results ({db.name}, {stamp})", ""]
    sections, written = [], []
    for data in snapshots:
        tables = build_tables(data)
        c = _counts(data)
        md += [
            f"## {data.name}",
            "",
            f"{c['cells']} cells, {c['trials']} trials: {c['ok']} stored, "
            f"{c['failed']} failed, {c['pending']} pending. Cells: mean ± standard error.",
            "",
        ]
        notes = _notes(data)
        if notes:
            md += ["**Attention:**", "", *(f"- {n}" for n in notes), ""]
            if warnings is not None:
                warnings += [f"{data.name}: {n}" for n in notes]
        pngs = {}
        for i, table in enumerate(tables):
            md += [f"### {table.title}", "", f"`{table.metric}` ({table.layout()})", "", table.markdown(), ""]
            path = out / "tables" / f"{slug(data.name)}__{slug(table.title)}.csv"
            write_atomic(path, table.csv_text())
            written.append(path)
            png = table_png(table)
            if png is not None:
                pngs[i] = png
        path = out / "trials" / f"{slug(data.name)}.csv"
        write_atomic(path, _trials_csv(data))
        written.append(path)
        sections.append(_matrix_html(data, tables, pngs))
    nav = "".join(f"<a href='#m-{slug(d.name)}'>{_e(d.name)}</a>" for d in snapshots)
    page = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>poisonlab bench: {_e(', '.join(d.name for d in snapshots))}</title>\n<style>{_CSS}</style>\n"
        f"</head>\n<body>\n<header><h1>poisonlab bench</h1><p class='meta'>{_e(db)} · {_e(stamp)}</p>"
        f"<nav>{nav}</nav></header>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )
    write_atomic(out / "tables.md", "\n".join(md))
    write_atomic(out / "report.html", page)
    if result is not None:
        written.append(write_result_file(snapshots[0], *result))
    return [out / "report.html", out / "tables.md", *written]
