"""The ``poisonlab`` command: ``run [CONFIG] [--out DIR]``, ``list``, ``bench MATRIX`` and ``report DB``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from poisonlab.errors import PoisonlabError
from poisonlab.results import check_output_dir, write_atomic

__all__ = ["build_parser", "main", "write_atomic"]


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _clean_floats(obj):
    """NaN and infinity are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean_floats(v) for v in obj]
    return obj


def cmd_run(args) -> int:
    from poisonlab.experiment import (
        check_data,
        load_config,
        load_splits,
        report_figures,
        report_views,
        run_experiment,
    )
    from poisonlab.report import render_report

    if args.data_root:
        os.environ["POISONLAB_DATA"] = str(args.data_root)
    if args.threads is not None:
        from poisonlab.bench.executors import check_threads

        check_threads(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    config = load_config(args.config, seed=args.seed, trials=args.trials)
    out = Path(args.out) if args.out else Path("runs") / config.name
    check_output_dir(out, "--out", files=("results.json", "report.html"))
    splits = load_splits(config.data, config.seed)
    check_data(config, *splits)  # every data-dependent value, before any training
    progress = not args.quiet and sys.stderr.isatty()
    print(f"poisonlab: running {config.name!r} ({config.trials} trial(s)) -> {out}", file=sys.stderr)
    result = run_experiment(config, progress=progress, splits=splits)
    results = _clean_floats(result.results)
    views = report_views(result, config.report_top_k)
    html = render_report(results, views, history=results.get("history"), extra_figures=report_figures(result))
    write_atomic(out / "results.json", json.dumps(results, indent=2, default=_json_default) + "\n")
    write_atomic(out / "report.html", html)
    width = max(len(k) for k in results["metrics"]) if results["metrics"] else 10
    for key, value in results["metrics"].items():
        if not key.endswith((".threshold", ".flagged_fraction")):
            shown = "n/a" if value is None else f"{value:.4f}"
            print(f"  {key:<{width}}  {shown}")
    print(f"poisonlab: wrote {out / 'results.json'} and {out / 'report.html'}", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    from poisonlab.models import MODELS
    from poisonlab.registry import describe

    print("models:")
    for name, (_, summary) in MODELS.items():
        print(f"  {name:<22} {summary}")
    kind = None
    for row_kind, name, summary, params in describe():
        if row_kind != kind:
            kind = row_kind
            print(f"{kind}s:")
        print(f"  {name:<22} {summary}")
        if args.verbose:
            for param, text in params.items():
                print(f"      {param}: {text}")
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so a bench run stops its workers and closes its store."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def cmd_bench(args) -> int:
    import signal

    from poisonlab.bench import check_matrix_data, load_matrix, run_bench, write_outputs
    from poisonlab.bench.executors import check_executor_options
    from poisonlab.bench.output import OUTPUT_FILES, OUTPUT_FOLDERS
    from poisonlab.bench.store import check_database

    data_root = args.data_root or os.environ.get("POISONLAB_DATA")
    if args.data_root:
        os.environ["POISONLAB_DATA"] = str(args.data_root)
    if args.trials is not None and args.trials < 1:
        raise PoisonlabError(f"--trials must be at least 1, got {args.trials}")
    check_executor_options(
        args.executor, args.workers, args.threads, args.cpus_per_trial, args.gpus_per_trial
    )  # before any file is touched
    matrix = load_matrix(args.matrix, trials=args.trials)  # every cell validated before anything runs
    db = Path(args.db) if args.db else Path("runs") / matrix.name / "results.db"
    out = Path(args.out) if args.out else db.parent
    check_matrix_data(matrix, devices=args.executor != "ray")  # every cell against its data (and devices)
    if args.dry_run:
        for cell in matrix.cells:
            print(f"  {cell.cell_id}  {cell.config.trials} trial(s)  {cell.label}")
        count = f"{len(matrix.cells)} valid cell(s), {matrix.trial_count()} trial(s)"
        print(f"poisonlab: {count}", file=sys.stderr)
        return 0
    check_database(db)
    if not args.no_report:
        check_output_dir(out, "--out", files=OUTPUT_FILES, folders=OUTPUT_FOLDERS)
    if args.result:
        _check_result_file(args.result, args.no_report)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        summary = run_bench(
            matrix,
            db,
            executor=args.executor,
            workers=args.workers,
            threads=args.threads,
            address=args.address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            data_root=data_root,
            retry_failed=not args.keep_failed,
            quiet=args.quiet,
        )
    except _Terminated:
        print(f"poisonlab: terminated; finished trials are in {db}, rerun to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"poisonlab: interrupted; finished trials are in {db}, rerun to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not args.no_report:
        warnings: list[str] = []
        result = _result_target(args.result, db, matrix.name, args.data_root)
        paths = write_outputs(db, out, matrix.name, warnings=warnings, result=result)
        for warning in warnings:
            print(f"poisonlab: warning: {warning}", file=sys.stderr)
        print(f"poisonlab: wrote {paths[0]} and {paths[1]}", file=sys.stderr)
        if args.result:
            print(f"poisonlab: wrote {args.result}", file=sys.stderr)
    print(
        f"poisonlab: {summary.ran} trial(s) run in {summary.elapsed:.1f}s, {summary.failed} failed; "
        f"{summary.stored + summary.ran - summary.failed}/{summary.total} stored in {db}",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0


def _check_result_file(path: str, no_report: bool = False) -> None:
    """--result names a file that can be written (checked before any work)."""
    if no_report:
        raise PoisonlabError("--result is written with the report; drop --no-report")
    if Path(path).is_dir():
        raise PoisonlabError(f"--result {path}: is a folder; give a file name such as results/NAME.md")
    check_output_dir(Path(path).parent, "--result")


def _result_target(result: str | None, db, matrix: str | None, data_root: str | None):
    """(path, regenerating command) for write_outputs, or None without --result."""
    if not result:
        return None
    from poisonlab.bench.output import regenerate_command
    from poisonlab.bench.store import ResultStore

    with ResultStore(db, create=False) as store:
        names = [matrix] if matrix else store.matrices()
        if len(names) != 1:
            raise PoisonlabError(f"--result: {db} holds {len(names)} matrices; choose one with --matrix")
        data = store.load(names[0])
    return result, regenerate_command(data, result, data_root)


def cmd_report(args) -> int:
    from poisonlab.bench import write_outputs

    warnings: list[str] = []
    if args.result:
        _check_result_file(args.result)
    result = _result_target(args.result, args.db, args.matrix, args.data_root)
    paths = write_outputs(args.db, args.out, args.matrix, warnings=warnings, result=result)
    if not args.quiet:
        print(Path(paths[1]).read_text())
    for warning in warnings:
        print(f"poisonlab: warning: {warning}", file=sys.stderr)
    print(f"poisonlab: wrote {paths[0]}, {paths[1]} and {len(paths) - 2} CSV file(s)", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (exit 2), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="poisonlab", description="Training-data poisoning experiments.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run an experiment config (default: the bundled digits demo)")
    run.add_argument("config", nargs="?", help="YAML experiment config")
    run.add_argument("--out", help="output folder (default: runs/NAME)")
    run.add_argument("--data-root", help="folder holding the data sets (default: $POISONLAB_DATA)")
    run.add_argument("--seed", type=int, help="override the config's seed")
    run.add_argument("--trials", type=int, help="override the config's number of trials")
    run.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)
    lst = sub.add_parser("list", help="list every registered model and method")
    lst.add_argument("-v", "--verbose", action="store_true", help="also list each method's parameters")
    lst.set_defaults(func=cmd_list)
    bench = sub.add_parser("bench", help="run an experiment matrix into a results database (resumable)")
    bench.add_argument("matrix", help="YAML matrix: a base experiment plus axes to sweep")
    bench.add_argument("--db", help="results database (default: runs/NAME/results.db)")
    bench.add_argument("--out", help="folder for report.html, tables.md and CSVs (default: the db's folder)")
    bench.add_argument(
        "--executor",
        choices=["pool", "inline", "ray"],
        default="pool",
        help="pool: local processes (default); inline: this process; ray: Ray tasks",
    )
    bench.add_argument("--workers", type=int, help="trials at a time (default: one per core)")
    bench.add_argument("--threads", type=int, default=1, help="torch CPU threads per trial (default 1)")
    bench.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    bench.add_argument("--cpus-per-trial", type=float, default=1.0, help="Ray CPU request per trial")
    bench.add_argument("--gpus-per-trial", type=float, default=0.0, help="Ray GPU request per trial")
    bench.add_argument("--data-root", help="folder holding the data sets (default: $POISONLAB_DATA)")
    bench.add_argument("--trials", type=int, help="override the matrix's trials per cell")
    bench.add_argument("--keep-failed", action="store_true", help="do not rerun trials stored as failed")
    bench.add_argument("--dry-run", action="store_true", help="validate and list the cells, run nothing")
    bench.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    bench.add_argument("--result", help="also write the result file (Markdown, ours beside the paper) here")
    bench.add_argument("--quiet", action="store_true", help="no progress output")
    bench.set_defaults(func=cmd_bench)
    rep = sub.add_parser("report", help="tables, CSVs and the HTML report of a results database")
    rep.add_argument("db", help="results database written by `poisonlab bench`")
    rep.add_argument("--out", help="output folder (default: the database's folder)")
    rep.add_argument("--matrix", help="only this matrix (default: every matrix in the database)")
    rep.add_argument("--quiet", action="store_true", help="do not print the Markdown tables")
    rep.add_argument("--result", help="also write the matrix's result file (Markdown) here")
    rep.add_argument("--data-root", help="the data folder named in the result file's command")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PoisonlabError as err:
        print(f"poisonlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("poisonlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
