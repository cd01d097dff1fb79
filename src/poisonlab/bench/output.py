"""Bench outputs from a results database: tables as Markdown and CSV, every trial as CSV, the HTML matrix
page (:mod:`poisonlab.report.matrix_page`).

:func:`write_outputs` reads a consistent snapshot of the store, so it works during a run (pending cells
show as missing or with fewer trials, marked ``(n=k)``).
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from poisonlab.bench.store import ResultStore, StoredMatrix
from poisonlab.bench.tables import build_tables
from poisonlab.report.figures import table_png
from poisonlab.report.matrix_page import matrix_html, render_matrices
from poisonlab.report.page import slug
from poisonlab.results import check_output_dir, write_atomic

OUTPUT_FILES, OUTPUT_FOLDERS = ("report.html", "tables.md"), ("tables", "trials")


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
        sections.append(matrix_html(data, tables, pngs, c, notes))
    page = render_matrices(str(db), stamp, [d.name for d in snapshots], sections)
    write_atomic(out / "tables.md", "\n".join(md))
    write_atomic(out / "report.html", page)
    if result is not None:
        written.append(write_result_file(snapshots[0], *result))
    return [out / "report.html", out / "tables.md", *written]
