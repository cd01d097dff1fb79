"""The results store: one SQLite file (WAL mode), written by the driver alone, one transaction per trial.

Tables: ``matrices`` (each matrix's spec), ``cells`` (a matrix's cells: labels, position, config) and
``trials`` (one row per finished trial, keyed by (cell_id, trial): status, resolved config, metrics,
timings, error). A trial stored as ``ok`` is never overwritten, so reruns cannot duplicate it; a
``failed`` one is replaced when it is run again.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from poisonlab.errors import PoisonlabError

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS matrices (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, source TEXT, updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    matrix TEXT NOT NULL, cell_id TEXT NOT NULL, position INTEGER NOT NULL, labels TEXT NOT NULL,
    trials INTEGER NOT NULL, config TEXT NOT NULL, PRIMARY KEY (matrix, cell_id)
);
CREATE TABLE IF NOT EXISTS trials (
    cell_id TEXT NOT NULL, trial INTEGER NOT NULL, seed INTEGER, status TEXT NOT NULL,
    config TEXT NOT NULL, metrics TEXT, timings TEXT, error TEXT, traceback TEXT,
    started TEXT, finished TEXT, duration REAL, worker TEXT, versions TEXT,
    PRIMARY KEY (cell_id, trial)
);
"""
_TRIAL_COLUMNS = (
    "cell_id",
    "trial",
    "seed",
    "status",
    "config",
    "metrics",
    "timings",
    "error",
    "traceback",
    "started",
    "finished",
    "duration",
    "worker",
    "versions",
)


def _finite(obj: Any) -> Any:
    """NaN / infinity -> None, recursively, so the stored JSON is standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(_finite(obj), allow_nan=False, default=str)


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class StoredCell:
    """A cell as the store knows it."""

    cell_id: str
    position: int
    labels: dict[str, str]
    trials: int
    config: dict[str, Any]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.labels.items()) or "base"


@dataclass
class StoredMatrix:
    """Everything the report needs about one matrix: spec, cells, and the trial rows of those cells."""

    name: str
    spec: dict[str, Any]
    source: str | None
    updated: str
    cells: list[StoredCell]
    trials: list[dict[str, Any]] = field(default_factory=list)  # only trials < the cell's trial count

    def expected(self) -> int:
        return sum(c.trials for c in self.cells)


class ResultStore:
    """A results database; ``create=False`` opens an existing one (for reports)."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise PoisonlabError(f"{self.path}: results database not found")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif _header(self.path) != b"SQLite format 3\x00":
            raise PoisonlabError(f"{self.path}: not a SQLite results database")
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 30000")
            if create:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self.conn.executescript(_SCHEMA)
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('poisonlab_bench_schema', ?)", (SCHEMA_VERSION,)
                )
            version = self.conn.execute(
                "SELECT value FROM meta WHERE key = 'poisonlab_bench_schema'"
            ).fetchone()
        except sqlite3.DatabaseError as err:
            raise PoisonlabError(f"{self.path}: not a poisonlab results database ({err})") from None
        if version is None:
            raise PoisonlabError(f"{self.path}: not a poisonlab results database")
        if version[0] != SCHEMA_VERSION:
            raise PoisonlabError(
                f"{self.path}: results schema {version[0]}, this poisonlab reads {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def register(self, matrix) -> None:
        """Store (or replace) a matrix's spec and its cells, in one transaction."""
        spec = matrix.spec.model_dump(mode="json")
        with self._transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO matrices VALUES (?, ?, ?, ?)",
                (matrix.name, _dumps(spec), matrix.source, now()),
            )
            self.conn.execute("DELETE FROM cells WHERE matrix = ?", (matrix.name,))
            self.conn.executemany(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        matrix.name,
                        c.cell_id,
                        c.position,
                        _dumps(c.labels),
                        c.config.trials,
                        _dumps(c.config.resolved()),
                    )
                    for c in matrix.cells
                ],
            )

    def status(self, cell_ids) -> dict[tuple[str, int], str]:
        """{(cell_id, trial): status} of the stored trials of these cells."""
        ids = list(dict.fromkeys(cell_ids))
        out: dict[tuple[str, int], str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self.conn.execute(
                f"SELECT cell_id, trial, status FROM trials WHERE cell_id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            out.update({(c, t): s for c, t, s in rows})
        return out

    def record(self, result: dict[str, Any]) -> bool:
        """Store one finished trial atomically; an ``ok`` row is never replaced. True if written."""
        row = dict(result)
        for key in ("config", "metrics", "timings", "versions"):
            row[key] = _dumps(row.get(key)) if row.get(key) is not None else None
        values = [row.get(k) for k in _TRIAL_COLUMNS]
        updates = ", ".join(f"{k} = excluded.{k}" for k in _TRIAL_COLUMNS[2:])
        with self._transaction():
            cur = self.conn.execute(
                f"INSERT INTO trials ({', '.join(_TRIAL_COLUMNS)}) VALUES ({', '.join('?' * len(values))}) "
                f"ON CONFLICT (cell_id, trial) DO UPDATE SET {updates} WHERE trials.status != 'ok'",
                values,
            )
            return cur.rowcount > 0

    def matrices(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM matrices ORDER BY updated, name")]

    def load(self, name: str) -> StoredMatrix:
        """A matrix with its cells and their stored trials (one consistent snapshot)."""
        with self._transaction(immediate=False):
            found = self.conn.execute(
                "SELECT spec, source, updated FROM matrices WHERE name = ?", (name,)
            ).fetchone()
            if found is None:
                known = ", ".join(self.matrices()) or "none"
                raise PoisonlabError(f"{self.path}: no matrix named {name!r} (stored: {known})")
            cells = [
                StoredCell(cid, pos, json.loads(labels), n, json.loads(config))
                for cid, pos, labels, n, config in self.conn.execute(
                    "SELECT cell_id, position, labels, trials, config FROM cells WHERE matrix = ? "
                    "ORDER BY position",
                    (name,),
                )
            ]
            limit = {c.cell_id: c.trials for c in cells}
            trials = []
            for cid in limit:
                for row in self.conn.execute(
                    f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials WHERE cell_id = ? ORDER BY trial", (cid,)
                ):
                    rec = dict(zip(_TRIAL_COLUMNS, row))
                    if rec["trial"] >= limit[cid]:
                        continue
                    for key in ("config", "metrics", "timings", "versions"):
                        rec[key] = json.loads(rec[key]) if rec[key] is not None else None
                    trials.append(rec)
        return StoredMatrix(name, json.loads(found[0]), found[1], found[2], cells, trials)

    def _transaction(self, immediate: bool = True):
        return _Transaction(self.conn, immediate)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection, immediate: bool):
        self.conn, self.immediate = conn, immediate

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE" if self.immediate else "BEGIN")
        return self.conn

    def __exit__(self, exc_type, *_):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
