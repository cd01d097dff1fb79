"""The results store: one SQLite file (WAL mode), written by the driver alone, one transaction per trial.

Tables: ``matrices`` (each matrix's spec), ``cells`` (a matrix's cells: labels, position, config) and
``trials`` (one row per finished trial, keyed by (cell_id, trial): status, resolved config, metrics,
timings, error). A trial stored as ``ok`` is never overwritten, so reruns cannot duplicate it; a
``failed`` one is replaced when it is run again. The file carries poisonlab's marker (``PRAGMA
application_id`` and the ``meta`` table): an existing SQLite file without it is refused untouched.
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
APPLICATION_ID = int.from_bytes(b"PLab", "big")  # PRAGMA application_id of a poisonlab results database
_MAGIC = b"SQLite format 3\x00"
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


def _read_only(path: Path, immutable: bool) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro")
    return sqlite3.connect(uri, uri=True, timeout=30.0)


def check_database(path: str | Path, *, create: bool = True) -> None:
    """Refuse, without writing to it, a results database that is not poisonlab's: a folder, a file that is
    not SQLite, or a SQLite file without poisonlab's marker (another application's). A missing or empty file
    is a new database when ``create``, else an error."""
    path = Path(path)
    try:
        if not path.exists():
            if not create:
                raise PoisonlabError(f"{path}: results database not found")
            from poisonlab.results import check_output_dir

            check_output_dir(path.parent, "--db folder")
            return
        if path.is_dir():
            raise PoisonlabError(f"{path}: is a folder, not a results database")
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as err:
        raise PoisonlabError(f"{path}: cannot read the results database ({err.strerror or err})") from None
    if not header:
        if create:
            return
        raise PoisonlabError(f"{path}: empty file, not a results database")
    if not header.startswith(_MAGIC) or len(header) < 100:
        raise PoisonlabError(f"{path}: not a SQLite results database; refusing to use it")
    app_id = int.from_bytes(header[68:72], "big")
    if app_id == APPLICATION_ID:
        return
    if app_id != 0:
        raise PoisonlabError(
            f"{path}: a SQLite database of another application (application_id {app_id:#010x}); "
            "refusing to touch it"
        )
    marker = None  # a database of an older poisonlab: the meta table, read without writing anything
    for immutable in (True, False):
        try:
            conn = _read_only(path, immutable)
            try:
                marker = conn.execute(
                    "SELECT value FROM meta WHERE key = 'poisonlab_bench_schema'"
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            marker = None
        if marker is not None or not Path(f"{path}-wal").exists():
            break
    if marker is None:
        raise PoisonlabError(
            f"{path}: a SQLite database without poisonlab's schema marker (another application's?); "
            "refusing to touch it"
        )


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
    skipped: list[str] = field(default_factory=list)  # stored rows that could not be read, and why
    orphans: list[dict[str, Any]] = field(default_factory=list)  # cells stored under this name, now gone

    def expected(self) -> int:
        return sum(c.trials for c in self.cells)

    def failed_cells(self) -> list[tuple[StoredCell, int, int, str]]:
        """(cell, failed trials, ok trials, first error) of each cell with a failed trial."""
        out = []
        for cell in self.cells:
            recs = [r for r in self.trials if r["cell_id"] == cell.cell_id]
            failed = [r for r in recs if r["status"] != "ok"]
            if failed:
                out.append((cell, len(failed), len(recs) - len(failed), str(failed[0].get("error") or "")))
        return out


_JSON_KINDS = {"config": dict, "metrics": dict, "timings": dict, "versions": dict}


def _parse_row(rec: dict[str, Any]) -> str | None:
    """Decode a trial row's JSON columns in place; the problem of a corrupt row, or None."""
    if isinstance(rec["trial"], bool) or not isinstance(rec["trial"], int):
        return f"trial number {rec['trial']!r} is not an integer"
    for key, kind in _JSON_KINDS.items():
        if rec[key] is None:
            continue
        try:
            rec[key] = json.loads(rec[key])
        except (TypeError, ValueError):
            return f"its {key} column is not valid JSON"
        if not isinstance(rec[key], kind):
            return f"its {key} column is a JSON {type(rec[key]).__name__}, not an object"
    for name, value in (rec["metrics"] or {}).items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"metric {name!r} is {value!r}, not a number"
    if rec["duration"] is not None and not isinstance(rec["duration"], int | float):
        rec["duration"] = None
    return None


class ResultStore:
    """A results database; ``create=False`` opens an existing one (for reports)."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        check_database(self.path, create=create)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 30000")
            if create:  # the marker first: in the file's header before any WAL holds pages
                self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
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
        """A matrix with its cells and their stored trials (one consistent snapshot). Rows that cannot be
        read are left out and listed in ``skipped``; trials of cells no longer in the matrix (stored under
        its name before it was edited) are counted in ``orphans``."""
        skipped: list[str] = []
        with self._transaction(immediate=False):
            found = self.conn.execute(
                "SELECT spec, source, updated FROM matrices WHERE name = ?", (name,)
            ).fetchone()
            if found is None:
                known = ", ".join(self.matrices()) or "none"
                raise PoisonlabError(f"{self.path}: no matrix named {name!r} (stored: {known})")
            try:
                spec = json.loads(found[0])
            except (TypeError, ValueError):
                spec = None
            if not isinstance(spec, dict):
                raise PoisonlabError(f"{self.path}: matrix {name!r}: its stored spec is not a JSON object")
            cells = []
            for cid, pos, labels, n, config in self.conn.execute(
                "SELECT cell_id, position, labels, trials, config FROM cells WHERE matrix = ? "
                "ORDER BY position",
                (name,),
            ):
                try:
                    labels, config = json.loads(labels), json.loads(config)
                    if not isinstance(labels, dict) or not isinstance(config, dict) or not isinstance(n, int):
                        raise ValueError
                except (TypeError, ValueError):
                    skipped.append(f"cell {cid}: its stored labels, config or trial count cannot be read")
                    continue
                cells.append(StoredCell(cid, pos, {str(k): str(v) for k, v in labels.items()}, n, config))
            limit = {c.cell_id: c.trials for c in cells}
            label = {c.cell_id: c.label for c in cells}
            trials = []
            for cid in limit:
                for row in self.conn.execute(
                    f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials WHERE cell_id = ? ORDER BY trial", (cid,)
                ):
                    rec = dict(zip(_TRIAL_COLUMNS, row))
                    problem = _parse_row(rec)
                    if problem is not None:
                        where = f"trial {rec['trial']} of cell {label[cid]} ({cid})"
                        skipped.append(f"{where}: {problem}; skipped")
                    elif rec["trial"] < limit[cid]:
                        trials.append(rec)
            orphans = [o for o in self.orphans() if o["matrix"] == name]
        return StoredMatrix(name, spec, found[1], found[2], cells, trials, skipped, orphans)

    def orphans(self) -> list[dict[str, Any]]:
        """Stored trials whose cell is in no stored matrix (its matrix was edited and rerun under the same
        name): one entry per cell with its matrix (from the trial's config name), name and status counts."""
        out: dict[str, dict[str, Any]] = {}
        for cid, status, config in self.conn.execute(
            "SELECT cell_id, status, config FROM trials WHERE cell_id NOT IN (SELECT cell_id FROM cells) "
            "ORDER BY cell_id, trial"
        ):
            try:
                cell_name = str(json.loads(config).get("name", ""))
            except (TypeError, ValueError, AttributeError):
                cell_name = ""
            matrix = cell_name.split("[", 1)[0]
            entry = out.setdefault(
                cid, {"cell_id": cid, "name": cell_name, "matrix": matrix, "ok": 0, "failed": 0}
            )
            entry["ok" if status == "ok" else "failed"] += 1
        return list(out.values())

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
