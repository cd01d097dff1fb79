"""Tables in the papers' layout: rows = methods, columns = settings, cells = mean +- standard error.

A table comes from a metric name whose ``{placeholders}`` (``detection.{detector}.auroc``) and the
matrix's axes are its dimensions. Axes that a table neither lays out nor pools are appended to its rows.
Metrics whose every trial is 0 or 1 (a success per trial) get the binomial standard error
sqrt(p (1 - p) / n); the others std / sqrt(n). A cell whose metric reads ground truth beyond scoring in its
cell's config (``experiment.oracle_prefixes``, ``metrics.is_oracle_metric``) is marked with a dagger.
A table's ``paper`` numbers are shown beside ours: one "paper" column when each row has one value, else a
"<column>: paper" column after each column the paper reports.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from poisonlab.bench.matrix import TableSpec
from poisonlab.bench.store import StoredMatrix
from poisonlab.metrics import binomial_se, is_binary, is_oracle_metric

# Tables a matrix gets when it declares none (each shown only when some trial has the metric).
DEFAULT_TABLES = (
    ("Victim clean accuracy", "victim.clean_accuracy"),
    ("Accuracy drop (clean model - victim)", "attack.accuracy_drop"),
    ("Attack success rate", "attack.{attack}.success_rate"),
    ("Net attack success rate (victim minus its clean twin)", "attack.{attack}.net_success_rate"),
    ("Targeted success (target gets the adversarial label)", "attack.{attack}.success"),
    ("Net targeted success (victim minus its clean twin)", "attack.{attack}.net_success"),
    ("Detection AUROC", "detection.{detector}.auroc"),
    ("Detected poisons with 1% of the rows flagged", "detection.{detector}.recall_at_1pct"),
    ("Detected poisons at the threshold", "detection.{detector}.recall"),
    ("Share of rows flagged at the threshold", "detection.{detector}.flagged_fraction"),
    ("Detected poisons at the budget", "detection.{detector}.recall_at_budget"),
    ("Defense: attack success after repair", "defense.{defense}.attack_success"),
    ("Defense: net attack success after repair", "defense.{defense}.net_attack_success"),
    ("Defense: clean accuracy after repair", "defense.{defense}.clean_accuracy"),
    ("Training-time defense: clean accuracy", "training_defense.{defense}.clean_accuracy"),
    ("Training-time defense: attack success", "training_defense.{defense}.{attack}.success_rate"),
    ("Training-time defense: net attack success", "training_defense.{defense}.{attack}.net_success_rate"),
    ("Training-time defense: targeted success", "training_defense.{defense}.{attack}.success"),
    ("Training-time defense: net targeted success", "training_defense.{defense}.{attack}.net_success"),
    ("Training-time defense: poisons removed (recall)", "training_defense.{defense}.removal_recall"),
    ("Training-time defense: share of rows removed", "training_defense.{defense}.removed_fraction"),
    ("Purification: test accuracy after retraining", "purification.{purifier}.clean_accuracy"),
    ("Purification: attack success after retraining", "purification.{purifier}.{attack}.success_rate"),
    (
        "Purification: net attack success after retraining",
        "purification.{purifier}.{attack}.net_success_rate",
    ),
    ("Purification: targeted success after retraining", "purification.{purifier}.{attack}.success"),
    ("Purification: net targeted success after retraining", "purification.{purifier}.{attack}.net_success"),
)

NO_DATA = "No stored trial has this metric yet."
ORACLE_MARK = "†"
ORACLE_NOTE = f"{ORACLE_MARK} oracle: reads ground truth beyond scoring (evaluation only)."


def cell_oracles(config: dict[str, Any]) -> dict[str, str]:
    """The oracle metric prefixes of a stored cell's resolved config (none if it no longer validates)."""
    from pydantic import ValidationError

    from poisonlab.errors import PoisonlabError
    from poisonlab.experiment import ExperimentConfig, oracle_prefixes

    try:
        return oracle_prefixes(ExperimentConfig.model_validate(config))
    except (ValidationError, PoisonlabError, TypeError):
        return {}


@dataclass
class Stat:
    """Mean, standard error and count of one table cell."""

    n: int
    mean: float
    se: float
    binomial: bool = False
    oracle: bool = False
    binary: bool = False  # every value 0 or 1 (also for a single trial)


def summarize(values) -> Stat:
    """Mean and standard error of per-trial values (binomial SE when every value is 0 or 1; NaN for n < 2)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(arr)
    if n == 0:
        return Stat(0, float("nan"), float("nan"))
    mean = float(arr.mean())
    binary = is_binary(arr)
    if binary and n > 1:
        return Stat(n, mean, binomial_se(mean, n), True, binary=True)
    se = float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return Stat(n, mean, se, binary=binary)


@dataclass
class Table:
    """A computed table: ordered row and column keys and a Stat per (row, column)."""

    title: str
    metric: str
    row_dims: list[str]
    col_dims: list[str]
    rows: list[tuple[str, ...]]
    cols: list[tuple[str, ...]]
    cells: dict[tuple[tuple[str, ...], tuple[str, ...]], Stat] = field(default_factory=dict)
    scale: float = 1.0
    digits: int = 3
    count: bool = False  # 0/1 cells as 'successes / trials'
    plot: bool = True
    failed: list[dict[str, str]] = field(default_factory=list)  # axis labels of cells with only failures
    paper: dict[str, Any] = field(default_factory=dict)  # row label -> value | {column label: value}
    extra_notes: list[str] = field(default_factory=list)  # e.g. which level each matched level took

    def is_failed(self, row: tuple[str, ...], col: tuple[str, ...]) -> bool:
        """True when a cell of the matrix at (row, col) has only failed trials."""
        coords = {**dict(zip(self.row_dims, row)), **dict(zip(self.col_dims, col))}
        return any(all(coords.get(k, v) == v for k, v in labels.items()) for labels in self.failed)

    def text(self, row: tuple[str, ...], col: tuple[str, ...], full_n: int) -> str:
        """The shown value of (row, col): 'failed' for a cell whose trials all failed."""
        stat = self.cells.get((row, col))
        if (stat is None or stat.n == 0) and self.is_failed(row, col):
            return "failed"
        return self.format(stat, full_n)

    def col_label(self, col: tuple[str, ...]) -> str:
        if not col:
            return "value"
        return ", ".join(col)

    def row_header(self) -> list[str]:
        return list(self.row_dims) or ["metric"]

    def row_label(self, row: tuple[str, ...]) -> list[str]:
        return list(row) if self.row_dims else [self.metric]

    def format(self, stat: Stat | None, full_n: int) -> str:
        """'mean ± se' scaled; '(n=k)' when the cell holds fewer trials than the fullest cell."""
        if stat is None or stat.n == 0:
            return "–"
        if self.count and stat.binary:
            return f"{round(stat.mean * stat.n)} / {stat.n}" + (f" {ORACLE_MARK}" if stat.oracle else "")
        text = f"{stat.mean * self.scale:.{self.digits}f}"
        if math.isfinite(stat.se):
            text += f" ± {stat.se * self.scale:.{self.digits}f}"
        if stat.n < full_n:
            text += f" (n={stat.n})"
        return text + (f" {ORACLE_MARK}" if stat.oracle else "")

    def row_key(self, row: tuple[str, ...]) -> str:
        """A row's name in ``paper``: its labels joined by ' / '."""
        return " / ".join(self.row_label(row))

    def columns(self) -> list[tuple[str, tuple[str, ...], bool]]:
        """(header, column, is_paper) in display order: ours, and the paper's beside them."""
        labels = [self.col_label(c) for c in self.cols]
        if not self.paper:
            return [(label, c, False) for label, c in zip(labels, self.cols)]
        if not any(isinstance(v, dict) for v in self.paper.values()):  # one paper value per row
            ours = [("ours" if label == "value" else label, c, False) for label, c in zip(labels, self.cols)]
            return ours + [("paper", (), True)]
        present = {self.row_key(r) for r in self.rows}
        reported = {k for r, v in self.paper.items() if isinstance(v, dict) and r in present for k in v}
        out = []
        for label, c in zip(labels, self.cols):
            out.append((label, c, False))
            if label in reported:
                out.append((f"{label}: paper", c, True))
        return out

    def paper_text(self, row: tuple[str, ...], col: tuple[str, ...]) -> str:
        """The paper's number for (row, col) as written ('–' when it reports none)."""
        entry = self.paper.get(self.row_key(row))
        if isinstance(entry, dict):
            entry = entry.get(self.col_label(col))
        if entry is None:
            return "–"
        return f"{entry:g}" if isinstance(entry, int | float) else str(entry)

    def cell_text(self, row: tuple[str, ...], col: tuple[str, ...], is_paper: bool, full_n: int) -> str:
        return self.paper_text(row, col) if is_paper else self.text(row, col, full_n)

    def unmatched_paper(self) -> list[str]:
        """Paper entries that name no row or column of this table (a typo, or a setting not run yet)."""
        rows = {self.row_key(r) for r in self.rows}
        cols = {self.col_label(c) for c in self.cols}
        out = []
        for key, entry in self.paper.items():
            if key not in rows:
                out.append(key)
            elif isinstance(entry, dict):
                out += [f"{key} / {c}" for c in entry if c not in cols]
        return out

    def has_oracle(self) -> bool:
        return any(s.oracle for s in self.cells.values())

    def full_n(self) -> int:
        return max((s.n for s in self.cells.values()), default=0)

    def layout(self) -> str:
        """What the rows and the columns are, e.g. 'rows: detector, victim; columns: fraction'."""
        rows = ", ".join(self.row_dims) or "metric"
        return f"rows: {rows}; columns: {', '.join(self.col_dims) or 'value'}"

    def markdown(self) -> str:
        if not self.rows:
            return NO_DATA
        columns = self.columns()
        full = self.full_n()
        rows = [
            self.row_label(row) + [self.cell_text(row, c, is_paper, full) for _, c, is_paper in columns]
            for row in self.rows
        ]
        text = markdown_table(self.row_header() + [h for h, _, _ in columns], rows)
        return "\n".join([text, "", *self.notes()]) if self.notes() else text

    def notes(self) -> list[str]:
        """The lines under the table: the oracle mark and paper values that found no row."""
        out = [ORACLE_NOTE] if self.has_oracle() else []
        out += self.extra_notes
        missing = self.unmatched_paper()
        if missing:
            out.append("Paper values with no row or column here: " + "; ".join(missing) + ".")
        return out

    def csv_text(self) -> str:
        """Wide CSV: the row dimensions, then mean, se and n for each column."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        head = self.row_header()
        columns = self.columns()
        for label, _, is_paper in columns:
            head += [label] if is_paper else [f"{label} mean", f"{label} se", f"{label} n"]
        writer.writerow(head)
        for row in self.rows:
            out: list[Any] = self.row_label(row)
            for _, c, is_paper in columns:
                s = self.cells.get((row, c))
                if is_paper:
                    text = self.paper_text(row, c)
                    out.append("" if text == "–" else text)
                elif s is None or s.n == 0:
                    out += ["", "", 0]
                else:
                    se = s.se * self.scale if math.isfinite(s.se) else ""
                    out += [repr(s.mean * self.scale), repr(se) if se != "" else "", s.n]
            writer.writerow(out)
        return buf.getvalue()

    def numeric_columns(self) -> list[float] | None:
        """The columns as numbers when there is one column dimension and every label is a number."""
        if len(self.col_dims) != 1:
            return None
        try:
            return [float(c[0]) for c in self.cols]
        except ValueError:
            return None


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (every cell as str); the one writer of tables.md, result files and the peer
    comparison scripts in benchmarks/."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def build_table(
    data: StoredMatrix, spec: TableSpec, title: str | None = None, keep_empty: bool = False
) -> Table | None:
    """One table from the stored ok trials of a matrix; if no trial has the metric, None or an empty one."""
    axes = list(data.spec.get("axes", {}))
    holders = spec.placeholders()
    dims = holders + axes
    laid = spec.rows + spec.columns + spec.pool
    row_dims = list(spec.rows) + [d for d in dims if d not in laid]
    col_dims = list(spec.columns)
    pattern = spec.pattern()
    cells_by_id = {c.cell_id: c for c in data.cells}
    oracles = {c.cell_id: cell_oracles(c.config) for c in data.cells}
    oracle_keys: set[tuple] = set()
    values: dict[tuple, list[float]] = {}
    order: dict[str, list[str]] = {d: [] for d in dims}
    for cell in data.cells:  # axis levels in the matrix's order
        for axis, label in cell.labels.items():
            if axis in order:
                order[axis].append(label)
    seen_trials: set = set()
    for rec in data.trials:
        if rec["status"] != "ok" or not rec["metrics"]:
            continue
        cell = cells_by_id.get(rec["cell_id"])
        if cell is None or (rec["cell_id"], rec["trial"]) in seen_trials:
            continue
        seen_trials.add((rec["cell_id"], rec["trial"]))
        for name, value in rec["metrics"].items():
            m = pattern.match(name)
            if m is None:
                continue
            coords = {**cell.labels, **m.groupdict()}
            for h in holders:
                order[h].append(coords[h])
            key = (tuple(coords[d] for d in row_dims), tuple(coords[d] for d in col_dims))
            values.setdefault(key, []).append(value)
            if is_oracle_metric(name, oracles[rec["cell_id"]]):
                oracle_keys.add(key)
    if not values and not keep_empty:
        return None
    order = {d: _ordered(v) for d, v in order.items()}
    failed = _failed_labels(data)
    present_rows, present_cols = {k[0] for k in values}, {k[1] for k in values}
    for labels in failed:  # a cell whose trials all failed keeps its column (or row), shown as 'failed'
        if set(col_dims) <= set(axes):
            present_cols.add(tuple(labels.get(d, "") for d in col_dims))
        if set(row_dims) <= set(axes) and values:
            present_rows.add(tuple(labels.get(d, "") for d in row_dims))
    rows = _product([order[d] for d in row_dims], present_rows)
    cols = _product([order[d] for d in col_dims], present_cols)
    table = Table(
        title=spec.title or title or spec.metric,
        metric=spec.metric,
        row_dims=row_dims,
        col_dims=col_dims,
        rows=rows,
        cols=cols,
        scale=spec.scale,
        digits=spec.digits,
        count=spec.count,
        plot=spec.plot,
        failed=failed,
        paper=dict(spec.paper),
    )
    for key, vals in values.items():
        table.cells[key] = summarize(vals)
        table.cells[key].oracle = key in oracle_keys
    return table


def add_matched(table: Table, data: StoredMatrix, spec: TableSpec) -> None:
    """Add each ``spec.matched`` level: per key of the other dimensions, the stats of the candidate whose mean
    ``by`` is closest to the matched level's (seed 003's Rand* / Frien*), with a note naming each choice."""
    for m in spec.matched:
        on_cols = m.dimension in table.col_dims
        dims = table.col_dims if on_cols else table.row_dims
        if m.dimension not in dims:
            table.extra_notes.append(f"{m.label}: no dimension {m.dimension!r} in this table.")
            continue
        by_spec = spec.model_copy(update={"metric": m.by, "matched": [], "paper": {}})
        by = build_table(data, by_spec, keep_empty=True)
        if by is not None:
            _match(table, by, m, on_cols, dims.index(m.dimension))


def _match(table: Table, by: Table, m, on_cols: bool, i: int) -> None:
    def at(row, col, level):
        key = col if on_cols else row
        key = key[:i] + (level,) + key[i + 1 :]
        return (row, key) if on_cols else (key, col)

    def mean_by(row, col, level) -> float | None:
        stat = by.cells.get(at(row, col, level))
        return stat.mean if stat is not None and stat.n else None

    choices = []
    for row, col in [k for k in table.cells if (k[1] if on_cols else k[0])[i] == m.to]:
        ref = mean_by(row, col, m.to)
        candidates = [
            c for c in m.among if at(row, col, c) in table.cells and mean_by(row, col, c) is not None
        ]
        if ref is None or not candidates:
            continue
        best = min(candidates, key=lambda c: abs(mean_by(row, col, c) - ref))
        table.cells[at(row, col, m.label)] = table.cells[at(row, col, best)]
        where = [v for j, v in enumerate(col if on_cols else row) if j != i] + list(row if on_cols else col)
        choices.append(f"{' / '.join(where) or 'all'}: {best}")
    if not choices:
        return
    keys = table.cols if on_cols else table.rows
    levels = _ordered(k[i] for k in keys)
    levels.insert(max(levels.index(c) for c in m.among if c in levels) + 1, m.label)
    orders = [levels if j == i else _ordered(k[j] for k in keys) for j in range(len(keys[0]))]
    present = set(keys) | {(k[1] if on_cols else k[0]) for k in table.cells}
    if on_cols:
        table.cols = _product(orders, present)
    else:
        table.rows = _product(orders, present)
    table.extra_notes.append(
        f"{m.label}: the one of {', '.join(m.among)} whose mean {m.by} is closest to {m.to}'s, chosen for "
        "each setting as seed 003 searches its baselines (on the reported accuracy): "
        + "; ".join(choices)
        + "."
    )


def _failed_labels(data: StoredMatrix) -> list[dict[str, str]]:
    """Axis labels of the cells with a stored trial, every one of them failed."""
    status: dict[str, set[str]] = {}
    for rec in data.trials:
        status.setdefault(rec["cell_id"], set()).add("ok" if rec["status"] == "ok" else "failed")
    return [c.labels for c in data.cells if status.get(c.cell_id) == {"failed"}]


def _product(levels: list[list[str]], present: set[tuple]) -> list[tuple[str, ...]]:
    """Keys in axis order, keeping only those that hold data."""
    keys: list[tuple[str, ...]] = [()]
    for level in levels:
        keys = [k + (v,) for k in keys for v in level]
    return [k for k in keys if k in present]


def build_tables(data: StoredMatrix) -> list[Table]:
    """The matrix's declared tables, or the default ones that have data."""
    declared = data.spec.get("tables") or []
    axes = list(data.spec.get("axes", {}))
    specs: list[tuple[TableSpec, str | None]] = []
    if declared:
        specs = [(TableSpec.model_validate(t), None) for t in declared]
    else:
        for title, metric in DEFAULT_TABLES:
            spec = TableSpec(metric=metric)
            rows = spec.placeholders() + axes[:-1]
            specs.append((TableSpec(metric=metric, rows=rows, columns=axes[-1:]), title))
    out = []
    for spec, title in specs:
        table = build_table(data, spec, title, keep_empty=bool(declared))
        if table is not None:
            add_matched(table, data, spec)
            out.append(table)
    return out
