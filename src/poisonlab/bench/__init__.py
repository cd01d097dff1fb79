"""Benchmark harness: experiment matrices, a SQLite results store with resume, parallel trials, tables.

    from poisonlab.bench import load_matrix, run_bench, write_outputs
    matrix = load_matrix("configs/matrix_digits_label_flip.yaml")   # every cell validated here
    check_matrix_data(matrix)                                      # and against its data
    run_bench(matrix, "runs/digits_label_flip/results.db", executor="pool", workers=2)
    write_outputs("runs/digits_label_flip/results.db")            # report.html, tables.md, CSVs

The unit of work is (cell, trial); a cell is identified by a hash of its resolved config. Finished
trials are committed one transaction each by the driver, so an interrupted run resumes where it stopped.
"""

from poisonlab.bench.executors import EXECUTORS, run_task
from poisonlab.bench.matrix import (
    Cell,
    Matrix,
    MatrixSpec,
    build_matrix,
    cell_identity,
    check_matrix_data,
    load_matrix,
)
from poisonlab.bench.output import write_outputs
from poisonlab.bench.runner import BenchSummary, run_bench
from poisonlab.bench.store import ResultStore
from poisonlab.bench.tables import Table, build_tables, summarize

__all__ = [
    "EXECUTORS",
    "BenchSummary",
    "Cell",
    "Matrix",
    "MatrixSpec",
    "ResultStore",
    "Table",
    "build_matrix",
    "build_tables",
    "cell_identity",
    "check_matrix_data",
    "load_matrix",
    "run_bench",
    "run_task",
    "summarize",
    "write_outputs",
]
