"""The ``poisonlab`` command: ``run [CONFIG] [--out DIR]``, ``list``, ``bench MATRIX``, ``report DB``, and for
a data owner (radioactive data, Sablayrolles 2020) ``mark DATA --out DIR`` and ``trace --carriers FILE``."""

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


OWNER_FORMATS = ("folder", "npz", "idx", "cifar")
UINT8_FORMATS = ("folder", "idx", "cifar")


def _load_owner_data(data: str, fmt: str | None, split: str, what: str):
    """(format, dataset, source) of DATA: ``digits`` is the bundled set (written back as npz); otherwise the
    format is ``fmt`` or guessed from the path. ``split`` "test" falls back to "train" when absent."""
    from poisonlab.data import guess_format, has_split, load_digits, load_format

    if data == "digits" and fmt is None:
        return "digits", load_digits(), "digits"
    path = Path(data).expanduser()
    if not path.exists():
        raise PoisonlabError(f"{what} {data}: data not found")
    fmt = fmt or guess_format(path)
    if split == "test" and not has_split(fmt, path, "test"):
        split = "train"
    return fmt, load_format(fmt, path, split), str(path)


def _check_empty_out(out: Path) -> Path:
    """--out for `mark`: writable, and new or empty (the folder becomes a data set loaded whole)."""
    check_output_dir(out, "--out")
    if out.is_dir():
        held = sorted(p.name for p in out.iterdir())
        if held:
            more = f" and {len(held) - 1} more" if len(held) > 1 else ""
            raise PoisonlabError(
                f"--out {out}: not empty (holds {held[0]!r}{more}); mark writes a new data set into a new or "
                "empty folder"
            )
    return out


def _publish(out: Path, write) -> list[str]:
    """``write(stage)`` into a hidden folder beside (or inside) ``out``, then moved into place: renamed to
    ``out`` when it does not exist, else its entries moved in (``marked.json`` last). Nothing is left on
    failure. Returns the names written."""
    import shutil
    import tempfile

    from poisonlab.results import _umask

    exists = out.is_dir()
    base = out if exists else out.parent
    while not base.exists():
        base = base.parent
    stage = Path(tempfile.mkdtemp(dir=base, prefix=".poisonlab-mark-"))
    try:
        write(stage)
        names = sorted(os.listdir(stage), key=lambda n: (n == "marked.json", n))
        if exists:
            for name in names:
                os.rename(stage / name, out / name)
            stage.rmdir()
        else:
            os.chmod(stage, 0o777 & ~_umask())
            out.parent.mkdir(parents=True, exist_ok=True)
            os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return names


def _quantise(marked, original, eps: float):
    """Marked images on the 1/255 grid of uint8 files, each pixel within ``eps`` of its uint8 original."""
    import torch

    from poisonlab.tracing.owner import eps_levels

    q0 = (original.double() * 255).round()
    levels = eps_levels(eps)
    q = torch.minimum(torch.maximum((marked.double() * 255).round(), q0 - levels), q0 + levels)
    return (q.clamp(0, 255) / 255).float()


def cmd_mark(args) -> int:
    import numpy as np
    import torch

    from poisonlab.attacks.radioactive import RadioactiveData
    from poisonlab.bench.executors import check_threads
    from poisonlab.checks import check_dataset, check_seed
    from poisonlab.data import npz_stores_uint8, save_cifar_batches, save_idx, save_image_folder, save_npz
    from poisonlab.models import MODELS, build_model
    from poisonlab.tracing.owner import carriers_record, save_carriers
    from poisonlab.training import TrainConfig, train

    check_threads(args.threads)
    if not (math.isfinite(args.fraction) and 0 < args.fraction <= 1):
        raise PoisonlabError(f"--fraction must be in (0, 1], got {args.fraction}")
    if not (math.isfinite(args.eps) and 0 < args.eps <= 255):
        raise PoisonlabError(f"--eps (in levels /255: 10 = 10/255) must be in (0, 255], got {args.eps}")
    for flag, value in (("--steps", args.steps), ("--epochs", args.epochs)):
        if value < 1:
            raise PoisonlabError(f"{flag} must be at least 1, got {value}")
    check_seed(args.seed, "--seed")
    if args.model not in MODELS:
        raise PoisonlabError(f"--model: unknown model {args.model!r}; known models: {', '.join(MODELS)}")
    out = _check_empty_out(Path(args.out))
    fmt, data, source = _load_owner_data(args.data, args.format, "train", "DATA")
    check_dataset(data, "mark", "DATA")
    present = len(np.unique(data.y.numpy()))
    if present < 2:
        raise PoisonlabError(f"DATA {source}: holds a single class; radioactive marks need at least 2")
    uint8 = fmt in UINT8_FORMATS or (fmt == "npz" and npz_stores_uint8(_npz_file(source)))
    if uint8 and args.eps < 1:
        raise PoisonlabError(f"--eps {args.eps}: below one pixel level, too small for {fmt} files (uint8)")
    count = round(args.fraction * len(data))
    if count < 1:
        raise PoisonlabError(f"--fraction {args.fraction} marks no row of the {len(data)} in DATA")
    eps = args.eps / 255
    marking = RadioactiveData(
        model=args.model, eps=eps, steps=args.steps, fraction=args.fraction,
        train=TrainConfig(epochs=args.epochs),
    )  # fmt: skip
    try:
        marker = build_model(args.model, data.input_shape, data.num_classes, seed=args.seed)
    except PoisonlabError as err:
        raise PoisonlabError(f"--model {args.model} for DATA {source}: {err}") from None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    progress = not args.quiet and sys.stderr.isatty()
    print(
        f"poisonlab: marking {count} of {len(data)} rows of {source} (eps {args.eps:g}/255) -> {out}",
        file=sys.stderr,
    )
    marker = train(marker, data, marking.train, seed=args.seed, progress=progress, desc="marking net").model
    generator = torch.Generator().manual_seed(args.seed)
    idx, carriers, marked, along = marking.mark(data, marker, generator, progress=progress)
    original = data.x[idx]
    if uint8:
        marked = _quantise(marked, original, eps)
    released = data.replace_rows(idx, marked)
    change = float((marked - original).abs().max()) * 255
    record = carriers_record(
        carriers, marker, args.model, data.input_shape, data.classes, eps=eps, fraction=args.fraction,
        seed=args.seed, steps=args.steps, epochs=args.epochs,
    )  # fmt: skip
    writers = {
        "digits": lambda d: save_npz(d / "train.npz", released),
        "npz": lambda d: save_npz(d / "train.npz", released, uint8=uint8),
        "idx": lambda d: save_idx(d, released),
        "cifar": lambda d: save_cifar_batches(d, released),
        "folder": lambda d: save_image_folder(d, released),
    }
    summary = {
        "source": source, "format": "npz" if fmt == "digits" else fmt, "count": len(idx),
        "total_rows": len(data), "classes": list(data.classes), "fraction": args.fraction,
        "eps": eps, "eps_levels": args.eps, "max_change_levels": round(change, 4), "model": args.model,
        "epochs": args.epochs, "steps": args.steps, "seed": args.seed, "feature_shift": along,
        "carriers": "carriers.pt", "reference": "Sablayrolles et al. 2020, Radioactive data",
    }  # fmt: skip

    def write(stage: Path) -> None:
        writers[fmt](stage)
        save_carriers(stage / "carriers.pt", record)
        text = json.dumps(summary, indent=2)[:-2]  # the rows on one line
        write_atomic(stage / "marked.json", text + f',\n  "rows": {json.dumps(idx.tolist())}\n}}\n')

    try:
        names = _publish(out, write)
    except OSError as err:
        raise PoisonlabError(f"--out {out}: cannot write the marked data ({err.strerror or err})") from None
    print(f"  marked rows            {len(idx)} of {len(data)}")
    print(f"  largest pixel change   {change:.2f}/255 (eps {args.eps:g}/255)")
    print(f"  feature shift          {along:+.4f} along the carriers (marking network)")
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    print(f"poisonlab: wrote {out}: {shown}", file=sys.stderr)
    return 0


def _npz_file(source: str) -> Path:
    path = Path(source)
    return path / "train.npz" if path.is_dir() else path


def cmd_trace(args) -> int:
    import torch

    from poisonlab.bench.executors import check_threads
    from poisonlab.models import MODELS
    from poisonlab.tracing import trace
    from poisonlab.tracing.owner import load_carriers, load_suspect

    check_threads(args.threads)
    if not (math.isfinite(args.alpha) and 0 < args.alpha < 1):
        raise PoisonlabError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.model not in MODELS:
        raise PoisonlabError(f"--model: unknown model {args.model!r}; known models: {', '.join(MODELS)}")
    owner = load_carriers(args.carriers)
    _, data, source = _load_owner_data(args.data, args.format, "test", "--data")
    if data.input_shape != owner.input_shape:
        raise PoisonlabError(
            f"--data {source}: images of shape {data.input_shape}, but the carriers were drawn for "
            f"{owner.input_shape}"
        )
    if len(data) < 2:
        raise PoisonlabError(f"--data {source}: {len(data)} image; aligning the feature spaces needs 2")
    suspect = load_suspect(args.model, args.weights, owner.input_shape, len(owner.classes))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = trace(suspect, owner.marker, owner.carriers, data.x, args.alpha)
    print(f"p-value: {result.p_value:.4g} (Fisher's combination over {len(owner.classes)} classes, "
          f"{len(data)} clean images)")  # fmt: skip
    print(f"traced: p < {args.alpha:g}" if result.detected else f"not traced: p >= {args.alpha:g}")
    print(result.explain(owner.classes))
    return 0


SCAN_FILES = ("scan.csv", "results.json", "report.html")


def _read_truth(path: str, rows: int):
    """--truth: the planted rows, for evaluation only: a JSON list of row ids, a JSON object with "rows"
    (what `poisonlab mark` writes), or a text file of row ids, one per line."""
    import numpy as np

    from poisonlab.checks import one_line

    file = Path(path).expanduser()
    if not file.is_file():
        raise PoisonlabError(f"--truth {path}: file not found")
    text = file.read_text(errors="replace")
    try:
        value = json.loads(text) if file.suffix == ".json" else [int(v) for v in text.split()]
    except ValueError as err:
        raise PoisonlabError(f"--truth {path}: not a list of row ids ({one_line(err)})") from None
    if isinstance(value, dict):
        value = value.get("rows")
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise PoisonlabError(f"--truth {path}: expected a list of integer row ids (or an object with 'rows')")
    bad = [v for v in value if not 0 <= v < rows]
    if bad:
        raise PoisonlabError(f"--truth {path}: row id {bad[0]} is outside the {rows} rows of DATA")
    mask = np.zeros(rows, bool)
    mask[value] = True
    return mask


def cmd_scan(args) -> int:
    import torch

    from poisonlab.bench.executors import check_threads
    from poisonlab.checks import check_dataset, check_seed
    from poisonlab.data import image_folder_files
    from poisonlab.models import MODELS
    from poisonlab.scan import scan
    from poisonlab.scan.output import report_html, summary, write_csv, write_json
    from poisonlab.tracing.owner import load_suspect
    from poisonlab.training import TrainConfig

    check_threads(args.threads)
    check_seed(args.seed, "--seed")
    for flag, value, least in (("--epochs", args.epochs, 1), ("--folds", args.folds, 2), ("-k", args.k, 1)):
        if value < least:
            raise PoisonlabError(f"{flag} must be at least {least}, got {value}")
    if args.model not in MODELS:
        raise PoisonlabError(f"--model: unknown model {args.model!r}; known models: {', '.join(MODELS)}")
    out = check_output_dir(Path(args.out), "--out", files=SCAN_FILES)
    fmt, data, source = _load_owner_data(args.data, args.format, "train", "DATA")
    check_dataset(data, "scan", "DATA")
    truth = _read_truth(args.truth, len(data)) if args.truth else None
    weights = None
    if args.weights:
        model = load_suspect(args.model, args.weights, data.input_shape, data.num_classes, against="DATA")
        weights = model.state_dict()
    paths = [str(p) for p in image_folder_files(source)[0]] if fmt == "folder" else None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    progress = not args.quiet and sys.stderr.isatty()
    print(f"poisonlab: scanning {len(data)} rows of {source} ({args.folds} folds, {args.epochs} epochs)",
          file=sys.stderr)  # fmt: skip
    config = TrainConfig(epochs=args.epochs, checkpoint_every=max(1, args.epochs // 4))
    result = scan(
        data, model=args.model, weights=weights, train_config=config, folds=args.folds, k=args.k,
        seed=args.seed, progress=progress,
    )  # fmt: skip
    record = summary(result, source, truth)
    html = report_html(result, data.x.numpy(), source, truth)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(result, out / "scan.csv", paths)
        write_json(record, out / "results.json")
        write_atomic(out / "report.html", html)
    except OSError as err:
        raise PoisonlabError(f"--out {out}: cannot write the scan ({err.strerror or err})") from None
    print(f"  rows flagged by at least one detector   {record['flagged_by_any']} of {len(data)}")
    for name, count in record["flagged"].items():
        print(f"    {name:<24s}{count}")
    for entry in record["top"][:5]:
        print(f"  row {entry['row']} ({entry['label']}): {entry['reason']}")
    print(f"poisonlab: wrote {out}: {', '.join(SCAN_FILES)}", file=sys.stderr)
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
    run.add_argument(
        "--threads", type=int, help="torch CPU threads (default: one per core, waiting passively when shared)"
    )
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
    mark = sub.add_parser("mark", help="mark a share of a data set as radioactive (Sablayrolles 2020)")
    mark.add_argument("data", metavar="DATA", help="data to mark: `digits`, an .npz, or a folder")
    mark.add_argument("--out", required=True, help="new or empty folder for the marked data and carriers")
    mark.add_argument("--fraction", type=float, default=0.1, help="share of the rows to mark (default 0.1)")
    mark.add_argument("--eps", type=float, default=10.0, help="L_inf bound in pixel levels /255 (default 10)")
    mark.add_argument("--format", choices=OWNER_FORMATS, help="DATA's format (default: from the path)")
    mark.add_argument("--model", default="cnn", help="marking network (default cnn)")
    mark.add_argument("--epochs", type=int, default=10, help="marking network epochs (default 10)")
    mark.add_argument("--steps", type=int, default=300, help="optimisation steps per image (default 300)")
    mark.add_argument("--seed", type=int, default=0, help="seed of the network, rows and carriers")
    mark.add_argument("--threads", type=int, help="torch CPU threads")
    mark.add_argument("--quiet", action="store_true", help="no progress bars")
    mark.set_defaults(func=cmd_mark)
    tr = sub.add_parser("trace", help="test whether a model was trained on marked data")
    tr.add_argument("--carriers", required=True, help="carriers.pt written by `poisonlab mark`")
    tr.add_argument("--weights", required=True, help="the suspect model's state dict (torch.save)")
    tr.add_argument("--model", required=True, help="the suspect model's architecture (see `poisonlab list`)")
    tr.add_argument("--data", required=True, help="clean images: digits, .npz or folder (test split if any)")
    tr.add_argument("--format", choices=OWNER_FORMATS, help="--data's format (default: from the path)")
    tr.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    tr.add_argument("--threads", type=int, help="torch CPU threads")
    tr.set_defaults(func=cmd_trace)

    sc = sub.add_parser("scan", help="audit a training set: which rows look tampered, and why")
    sc.add_argument(
        "data", metavar="DATA", help="data to scan: `digits`, an .npz, IDX or CIFAR files, or a folder"
    )
    sc.add_argument("--format", choices=OWNER_FORMATS, help="DATA's format (default: from the path)")
    sc.add_argument("--out", default="runs/scan", help="folder for scan.csv, results.json, report.html")
    sc.add_argument(
        "--model", default="cnn", help="architecture trained per fold and on all rows (default cnn)"
    )
    sc.add_argument("--weights", help="your trained model's state dict (torch.save) for the full model")
    sc.add_argument("--epochs", type=int, default=8, help="training epochs of each model (default 8)")
    sc.add_argument("--folds", type=int, default=3, help="cross-fitting folds (default 3)")
    sc.add_argument("-k", type=int, default=10, help="nearest neighbours of the k-NN detectors (default 10)")
    sc.add_argument("--truth", help="planted row ids (JSON list or text), for evaluation only")
    sc.add_argument("--seed", type=int, default=0, help="seed of the folds and the models")
    sc.add_argument("--threads", type=int, help="torch CPU threads")
    sc.add_argument("--quiet", action="store_true", help="no progress bars")
    sc.set_defaults(func=cmd_scan)
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
