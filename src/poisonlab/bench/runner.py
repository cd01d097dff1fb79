"""The driver: skip stored trials, keep the executor busy, store each result as it arrives, show progress."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from poisonlab.bench.executors import check_executor_options, failure, make_executor
from poisonlab.bench.matrix import Matrix
from poisonlab.bench.store import ResultStore, check_database
from poisonlab.errors import PoisonlabError


@dataclass
class BenchSummary:
    """What a ``bench`` run did."""

    db: Path
    total: int  # trials of the matrix
    stored: int  # already stored as ok before this run
    ran: int  # trials finished in this run (ok or failed)
    failed: int  # of those, failed
    elapsed: float

    @property
    def complete(self) -> bool:
        return self.stored + self.ran - self.failed == self.total


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Trials done / running / failed and an ETA: a tqdm bar on a terminal, else one line per trial."""

    def __init__(
        self,
        total: int,
        labels: dict[str, str],
        stream: TextIO | None = None,
        tty: bool | None = None,
        quiet: bool = False,
    ):
        self.total, self.labels, self.quiet = total, labels, quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = self.failed = self.running = 0
        self.start = time.perf_counter()
        self.bar = None
        if self.tty and not quiet and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="trial", file=self.stream, dynamic_ncols=True, desc="bench")

    def eta(self) -> float | None:
        if not self.done:
            return None
        return (time.perf_counter() - self.start) / self.done * (self.total - self.done)

    def update(self, result: dict[str, Any] | None, running: int) -> None:
        self.running = running
        if result is not None:
            self.done += 1
            self.failed += result["status"] != "ok"
        if self.quiet:
            return
        what = ""
        if result is not None:
            cell = self.labels.get(result["cell_id"], result["cell_id"])
            what = f"{cell} trial {result['trial']}"
        if self.bar is not None:
            if result is not None:
                self.bar.update(1)
                if result["status"] != "ok":
                    self.bar.write(f"poisonlab: FAILED {what}: {result.get('error')}", file=self.stream)
            self.bar.set_postfix(running=running, failed=self.failed, refresh=True)
            return
        if result is None:
            return
        eta = self.eta()
        status = "ok" if result["status"] == "ok" else f"FAILED ({result.get('error')})"
        print(
            f"poisonlab: [{self.done}/{self.total}] {what} {status} in {result.get('duration', 0):.1f}s;"
            f" running {running}, failed {self.failed}, ETA {_fmt_time(eta) if eta is not None else '?'}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def pending_trials(matrix: Matrix, store: ResultStore, retry_failed: bool = True) -> tuple[list[tuple], int]:
    """([(cell, trial) still to run], number already stored as ok); each (cell id, trial) once."""
    status = store.status(c.cell_id for c in matrix.cells)
    todo, seen, stored = [], set(), 0
    for cell in matrix.cells:
        for trial in range(cell.config.trials):
            key = (cell.cell_id, trial)
            if key in seen:
                continue
            seen.add(key)
            state = status.get(key)
            if state == "ok":
                stored += 1
            elif state is None or retry_failed:
                todo.append((cell, trial))
    return todo, stored


def run_bench(
    matrix: Matrix,
    db: str | Path,
    *,
    executor: str = "pool",
    workers: int | None = None,
    threads: int | None = 1,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    data_root: str | None = None,
    retry_failed: bool = True,
    quiet: bool = False,
    stream: TextIO | None = None,
    tty: bool | None = None,
) -> BenchSummary:
    """Run every trial of ``matrix`` not yet stored in ``db``; each finished trial is committed at once.

    ``executor`` is pool (local processes), inline or ray; ``workers`` caps the trials in flight.
    Failed trials are stored with their error (and rerun next time unless ``retry_failed`` is False).
    The options and the database (new, or poisonlab's) are checked before anything is created.
    """
    stream = stream or sys.stderr
    start = time.perf_counter()
    check_executor_options(executor, workers, threads, cpus_per_trial, gpus_per_trial)
    check_database(db)

    def say(text: str) -> None:
        if not quiet:
            print(f"poisonlab: {text}", file=stream, flush=True)

    with _exclusive(Path(db)), ResultStore(db) as store:
        store.register(matrix)
        orphans = [o for o in store.orphans() if o["matrix"] == matrix.name]
        if orphans:
            count = sum(o["ok"] + o["failed"] for o in orphans)
            say(
                f"{count} stored trial(s) of {len(orphans)} cell(s) of an earlier {matrix.name!r} are not in "
                "this matrix: kept in the database, listed by the report, not in its tables"
            )
        todo, stored = pending_trials(matrix, store, retry_failed)
        total = stored + len(todo) + (0 if retry_failed else _failed_count(matrix, store))
        summary = BenchSummary(Path(db), total, stored, 0, 0, 0.0)
        say(
            f"matrix {matrix.name!r}: {len(matrix.cells)} cell(s), {total} trial(s); "
            f"{stored} already stored, {len(todo)} to run -> {db}"
        )
        if not todo:
            return summary
        if executor == "pool":  # no idle workers for a short remainder
            workers = min(workers or os.cpu_count() or 1, len(todo))
        pool = make_executor(
            executor,
            workers=workers,
            threads=threads,
            address=address,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
        )
        say(f"{pool.name} executor, {pool.slots} trial(s) at a time")
        progress = Progress(len(todo), {c.cell_id: c.label for c in matrix.cells}, stream, tty, quiet)
        queue = deque(todo)
        inflight: dict[Any, dict] = {}
        cancel = True
        try:
            while queue or inflight:
                while queue and len(inflight) < pool.slots:
                    cell, trial = queue.popleft()
                    task = {
                        "cell_id": cell.cell_id,
                        "trial": trial,
                        "seed": cell.config.seed + trial,
                        "config": cell.config.model_dump(mode="json"),
                        "resolved": cell.config.resolved(),
                        "threads": threads,
                        "data_root": data_root,
                    }
                    inflight[pool.submit(task)] = task
                progress.update(None, len(inflight))
                for handle, result in pool.wait(list(inflight), timeout=1.0):
                    task = inflight.pop(handle)
                    if isinstance(result, BaseException):
                        result = failure(task, result)
                    with _signals_deferred():  # a trial is stored whole or not at all
                        store.record(result)
                    summary.ran += 1
                    summary.failed += result["status"] != "ok"
                    progress.update(result, min(pool.slots, len(inflight) + len(queue)))
            cancel = False
        finally:
            progress.close()
            pool.shutdown(cancel=cancel)
            summary.elapsed = time.perf_counter() - start
        return summary


@contextmanager
def _exclusive(db: Path):
    """One driver per database: a second ``bench`` on it fails at once instead of repeating trials. The lock
    file sits beside the resolved database, so a symlinked or relative name finds the same lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    real = Path(os.path.realpath(db))
    real.parent.mkdir(parents=True, exist_ok=True)
    with open(real.with_name(real.name + ".lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PoisonlabError(f"{db}: another `poisonlab bench` is running on this database") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _signals_deferred():
    """Hold SIGINT / SIGTERM until the block is done (main thread, POSIX)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _failed_count(matrix: Matrix, store: ResultStore) -> int:
    status = store.status(c.cell_id for c in matrix.cells)
    keys = {(c.cell_id, t) for c in matrix.cells for t in range(c.config.trials)}
    return sum(1 for k in keys if status.get(k) == "failed")
