"""The matrix page: the tables, plots, failures and cells of the matrices in a bench database.

Imports nothing from :mod:`poisonlab.bench` at run time (``bench.output`` calls it); the counts and notes
of each matrix come from the caller.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import yaml

from poisonlab.report.page import escape, header, img_tag, page, slug

if TYPE_CHECKING:
    from poisonlab.bench.store import StoredMatrix
    from poisonlab.bench.tables import Table


def _html_table(table: Table) -> str:
    if not table.rows:
        return f"<p class='meta'>{escape(table.markdown())}</p>"  # an empty table's text says so
    full = table.full_n()
    columns = table.columns()
    head = "".join(f"<th class='lab'>{escape(h)}</th>" for h in table.row_header())
    head += "".join(f"<th{' class=paper' if p else ''}>{escape(h)}</th>" for h, _, p in columns)
    body = []
    for row in table.rows:
        tds = "".join(f"<td class='lab'>{escape(v)}</td>" for v in table.row_label(row))
        for _, c, p in columns:
            tds += f"<td{' class=paper' if p else ''}>{escape(table.cell_text(row, c, p, full))}</td>"
        body.append(f"<tr>{tds}</tr>")
    note = "".join(f"<p class='meta'>{escape(n)}</p>" for n in table.notes())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def matrix_html(
    data: StoredMatrix, tables: list[Table], pngs: dict[int, bytes], counts: dict[str, int], notes: list[str]
) -> str:
    """One matrix's section: status, attention notes, every table (and its plot), failed trials, cells,
    spec and versions. ``pngs`` maps a table's index to its plot."""
    c = counts
    status = (
        f"{c['cells']} cells, {c['trials']} trials: {c['ok']} stored, "
        f"<span class='{'bad' if c['failed'] else ''}'>{c['failed']} failed</span>, {c['pending']} pending"
    )
    if c["pending"]:
        status += " <span class='tag'>incomplete: a run may be in progress</span>"
    parts = [f"<section id='m-{slug(data.name)}'><h2>{escape(data.name)}</h2>"]
    if data.spec.get("description"):
        parts.append(f"<p>{escape(data.spec['description'])}</p>")
    parts.append(
        f"<p class='meta'>{status}. Cells: mean ± standard error over trials "
        "(binomial for 0/1 metrics); (n=k) marks a cell with fewer trials.</p>"
    )
    for i, table in enumerate(tables):
        meta = f"<code>{escape(table.metric)}</code> · {escape(table.layout())}"
        parts.append(f"<h3>{escape(table.title)}</h3><p class='meta'>{meta}</p>")
        parts.append(_html_table(table))
        if i in pngs:
            parts.append(f"<figure>{img_tag(pngs[i], table.title)}</figure>")
    if notes:
        items = "".join(f"<li class='bad'>{escape(n)}</li>" for n in notes)
        parts.insert(3 if data.spec.get("description") else 2, f"<h3>Attention</h3><ul>{items}</ul>")
    failed = [r for r in data.trials if r["status"] != "ok"]
    if failed:
        labels = {cell.cell_id: cell.label for cell in data.cells}
        rows = "".join(
            f"<tr><td class='lab'>{escape(labels.get(r['cell_id'], r['cell_id']))}</td><td>{r['trial']}</td>"
            f"<td class='lab bad'>{escape(r['error'])}</td></tr>"
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
            f"<tr><td class='lab'>{escape(cell.label)}</td><td class='lab'><code>{cell.cell_id}</code></td>"
            f"<td>{len(ok)} / {cell.trials}</td><td>{len(recs) - len(ok)}</td>"
            f"<td>{'–' if math.isnan(mean_time) else f'{mean_time:.1f} s'}</td></tr>"
        )
    parts.append(
        "<h3>Cells</h3><table><thead><tr><th class='lab'>cell</th><th class='lab'>id</th>"
        "<th>stored</th><th>failed</th><th>mean trial time</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    spec = yaml.safe_dump(data.spec, sort_keys=False, default_flow_style=None, width=110)
    summary = f"<summary>Matrix spec ({escape(data.source or '')})</summary>"
    parts.append(f"<details>{summary}<pre>{escape(spec)}</pre></details>")
    versions = next((r["versions"] for r in reversed(data.trials) if r.get("versions")), None)
    if versions:
        text = ", ".join(f"{k} {v}" for k, v in versions.items())
        parts.append(f"<p class='meta'>Versions (latest trial): {escape(text)}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def render_matrices(db: str, stamp: str, names: list[str], sections: list[str]) -> str:
    """The matrix page: one section (:func:`matrix_html`) per matrix in ``names``, read from ``db``."""
    links = [(f"m-{slug(n)}", n) for n in names]
    top = header("poisonlab bench", f"{escape(db)} · {escape(stamp)}", links)
    return page(f"poisonlab bench: {', '.join(names)}", top, "\n".join(sections))
