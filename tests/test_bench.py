"""The benchmark harness: matrix expansion and validation, the results store, executors, kill + resume."""

import io
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from poisonlab.bench import build_matrix, build_tables, load_matrix, run_bench, summarize, write_outputs
from poisonlab.bench.executors import make_executor
from poisonlab.bench.runner import Progress
from poisonlab.bench.store import ResultStore, StoredCell, StoredMatrix
from poisonlab.cli import main
from poisonlab.errors import ConfigError, PoisonlabError

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "data": {"name": "digits"},
    "model": "logreg",
    "train": {"epochs": 3, "batch_size": 64},
    "baseline": False,
    "attacks": [{"name": "label_flip_random", "fraction": 0.1}],
    "detectors": [{"name": "knn", "k": 20}, {"name": "spectral"}],
}


def tiny_matrix(**extra):
    raw = {
        "name": "tiny",
        "base": BASE,
        "trials": 2,
        "axes": {
            "fraction": {"key": "attacks[0].fraction", "values": [0.05, 0.2]},
            "victim": {"levels": {"lr": {"model": "logreg"}, "mlp": {"model": "mlp", "train.epochs": 2}}},
        },
    }
    raw.update(extra)
    return raw


def stored(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT cell_id, trial, status, metrics, finished FROM trials ORDER BY cell_id, trial"
        ).fetchall()


# ---------------------------------------------------------------- matrices


def test_matrix_expands_every_cell_with_its_overrides():
    m = build_matrix(tiny_matrix())
    assert [c.label for c in m.cells] == [
        "fraction=0.05, victim=lr",
        "fraction=0.05, victim=mlp",
        "fraction=0.2, victim=lr",
        "fraction=0.2, victim=mlp",
    ]
    mlp = m.cells[3].config
    assert mlp.model == "mlp" and mlp.train.epochs == 2 and mlp.attacks[0]["fraction"] == 0.2
    assert mlp.trials == 2 and m.trial_count() == 8
    assert m.cells[0].config.train.epochs == 3  # other cells keep the base
    assert len({c.cell_id for c in m.cells}) == 4
    # identity: the resolved config without name/trials; equal configs, equal ids, across matrices
    again = build_matrix(tiny_matrix(name="renamed", trials=5))
    assert [c.cell_id for c in again.cells] == [c.cell_id for c in m.cells]
    changed = build_matrix(tiny_matrix(base={**BASE, "seed": 1}))
    assert not {c.cell_id for c in changed.cells} & {c.cell_id for c in m.cells}


def test_matrix_without_axes_is_one_cell_and_values_of_methods_get_labels():
    one = build_matrix({"name": "one", "base": BASE})
    assert len(one.cells) == 1 and one.cells[0].label == "base"
    m = build_matrix(
        {
            "name": "dets",
            "base": BASE,
            "axes": {
                "detector": {
                    "key": "detectors",
                    "values": [[{"name": "knn"}], [{"name": "spectral", "id": "spec"}]],
                }
            },
        }
    )
    assert [c.labels["detector"] for c in m.cells] == ["knn", "spec"]


@pytest.mark.parametrize(
    ("axes", "cell", "key"),
    [
        (
            {"fraction": {"key": "attacks[0].fraction", "values": [0.1, 1.5]}},
            "cell fraction=1.5",
            "attacks[0].fraction",
        ),
        ({"lr": {"key": "train.lr", "values": [0.1, -1]}}, "cell lr=-1", "train.lr"),
        ({"a": {"key": "attacks[3].fraction", "values": [0.1]}}, "cell a=0.1", "attacks[3].fraction"),
        ({"v": {"levels": {"ok": {}, "bad": {"detectors[1].bogus": 1}}}}, "cell v=bad", "detectors[1].bogus"),
        ({"m": {"key": "model", "values": ["mlp", "vgg"]}}, "cell m=vgg", "model"),
    ],
)
def test_invalid_cell_is_rejected_naming_the_cell_and_the_key(axes, cell, key):
    with pytest.raises(ConfigError) as err:
        build_matrix({"name": "bad", "base": BASE, "axes": axes})
    assert cell in str(err.value) and key in str(err.value)


def test_invalid_cell_fails_the_cli_before_any_trial(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    raw = tiny_matrix()
    raw["axes"]["fraction"]["values"] = [0.05, 2.0]
    path.write_text(yaml.safe_dump(raw))
    db = tmp_path / "out" / "results.db"
    assert main(["bench", str(path), "--db", str(db), "--executor", "inline"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cell fraction=2.0, victim=lr" in err and "attacks[0].fraction" in err and "(and 1 more" in err
    assert not db.exists() and not db.parent.exists()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"tables": [{"metric": "detection.{detector}.auroc", "rows": ["nope"]}]},
            ["tables[0].rows", "'nope'"],
        ),
        (
            {
                "axes": {"fraction": {"key": "attacks[0].fraction", "values": [0.1]}},
                "tables": [{"metric": "victim.clean_accuracy", "pool": ["fraction"], "columns": "fraction"}],
            },
            ["tables[0].pool", "twice"],
        ),
        ({"axes": {"x": {"key": "seed"}}}, ["axes.x", "key and values"]),
        ({"axes": {"x": {"key": "seed", "values": [1, 1]}}}, ["axes.x", "share a label"]),
        (
            {"axes": {"a": {"key": "seed", "values": [0, 1]}, "b": {"levels": {"x": {"seed": 0}, "y": {}}}}},
            ["same experiment as cell"],
        ),
        ({"oops": 1}, ["oops", "unknown key"]),
    ],
)
def test_bad_matrix_specs_name_the_key(change, words):
    raw = {"name": "m", "base": BASE, **change}
    with pytest.raises(ConfigError) as err:
        build_matrix(raw)
    for word in words:
        assert word in str(err.value)


def test_shipped_matrices_are_valid():
    paths = sorted((ROOT / "configs").glob("matrix_*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        m = load_matrix(path)
        assert m.cells and all(c.config.trials >= 1 for c in m.cells)
    seed000 = load_matrix(ROOT / "configs" / "matrix_seed000_mnist.yaml")
    assert {c.config.detect_with for c in seed000.cells} == {"oracle_clean", "holdout", "victim"}
    assert seed000.cells[0].config.data.name == "mnist"  # the base file was read relative to the matrix


# ---------------------------------------------------------------- store and tables


def test_store_never_overwrites_a_finished_trial_and_replaces_a_failed_one(tmp_path):
    m = build_matrix({"name": "one", "base": BASE, "trials": 2})
    cid = m.cells[0].cell_id
    with ResultStore(tmp_path / "r.db") as store:
        store.register(m)
        row = {"cell_id": cid, "config": {}, "started": "s", "finished": "f", "duration": 1.0}
        assert store.record({**row, "trial": 0, "status": "failed", "error": "boom"})
        assert store.record({**row, "trial": 0, "status": "ok", "metrics": {"a": 1.0}})
        assert not store.record({**row, "trial": 0, "status": "ok", "metrics": {"a": 2.0}})
        assert not store.record({**row, "trial": 0, "status": "failed", "error": "late"})
        assert store.record({**row, "trial": 1, "status": "ok", "metrics": {"a": float("nan")}})
        assert store.record({**row, "trial": 2, "status": "ok", "metrics": {"a": 3.0}})
        data = store.load("one")
    assert [(r["trial"], r["status"], r["metrics"]) for r in data.trials] == [
        (0, "ok", {"a": 1.0}),
        (1, "ok", {"a": None}),
    ]
    assert data.expected() == 2  # the matrix has 2 trials per cell: trial 2 is not part of it


def test_summarize_uses_binomial_se_for_successes():
    s = summarize([1.0, 0.0, 1.0, 1.0])
    assert s.binomial and s.mean == 0.75 and s.se == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    s = summarize([0.2, 0.4, None, float("nan")])
    assert not s.binomial and s.n == 2 and s.se == pytest.approx(0.1 * math.sqrt(2) / math.sqrt(2))
    assert math.isnan(summarize([0.5]).se) and math.isnan(summarize([1.0]).se) and summarize([]).n == 0


def test_tables_lay_out_placeholders_axes_and_pooled_axes():
    spec = {
        "axes": {"frac": {}, "seedset": {}},
        "tables": [
            {
                "metric": "detection.{detector}.auroc",
                "rows": "detector",
                "columns": "frac",
                "pool": "seedset",
                "title": "AUROC",
                "digits": 2,
            },
            {"metric": "victim.clean_accuracy", "columns": "frac", "scale": 100, "digits": 1},
            {"metric": "attack.{attack}.success_rate", "columns": "frac"},
        ],
    }
    cells = [
        StoredCell(f"c{i}", i, {"frac": f, "seedset": s}, 2, {})
        for i, (f, s) in enumerate([("0.1", "a"), ("0.1", "b"), ("0.2", "a"), ("0.2", "b")])
    ]
    trials = []
    for i, cell in enumerate(cells):
        for t in range(2):
            if cell.cell_id == "c3" and t == 1:
                trials.append({"cell_id": "c3", "trial": 1, "status": "failed", "metrics": None})
                continue
            auroc = 0.5 + 0.1 * i + 0.02 * t
            metrics = {
                "detection.knn.auroc": auroc,
                "detection.spectral.auroc": auroc / 2,
                "detection.knn.attack0.auroc": 0.0,
                "victim.clean_accuracy": 0.9,
            }
            trials.append({"cell_id": cell.cell_id, "trial": t, "status": "ok", "metrics": metrics})
    data = StoredMatrix("m", spec, None, "now", cells, trials)
    auroc, acc, missing = build_tables(data)
    assert missing.rows == [] and missing.markdown() == "No stored trial has this metric yet."
    assert auroc.rows == [("knn",), ("spectral",)] and auroc.cols == [("0.1",), ("0.2",)]
    knn_01 = auroc.cells[(("knn",), ("0.1",))]  # pooled over seedset: cells c0 and c1, 2 trials each
    assert knn_01.n == 4 and knn_01.mean == pytest.approx((0.5 + 0.52 + 0.6 + 0.62) / 4)
    assert auroc.cells[(("knn",), ("0.2",))].n == 3
    md = auroc.markdown().splitlines()
    assert md[0] == "| detector | 0.1 | 0.2 |"
    assert md[2] == "| knn | 0.56 ± 0.03 | 0.74 ± 0.03 (n=3) |"
    # the unpooled axis not laid out goes to the rows; no placeholder here
    assert acc.row_dims == ["seedset"] and acc.rows == [("a",), ("b",)]
    assert acc.markdown().splitlines()[2] == "| a | 90.0 ± 0.0 | 90.0 ± 0.0 |"
    csv_lines = auroc.csv_text().splitlines()
    assert csv_lines[0] == "detector,0.1 mean,0.1 se,0.1 n,0.2 mean,0.2 se,0.2 n"


def test_a_count_table_shows_successes_over_trials():
    """Detection frequency as the seed reports it (x / n); a non-0/1 cell keeps mean ± se."""
    cells = [StoredCell(f"c{i}", i, {"frac": f}, 3, {}) for i, f in enumerate(["0.1", "0.2"])]
    detected = {"c0": [1.0, 0.0, 1.0], "c1": [0.5, 1.0, 1.0]}
    trials = [
        {"cell_id": c.cell_id, "trial": t, "status": "ok",
         "metrics": {"attack.mark.detected": detected[c.cell_id][t]}}
        for c in cells for t in range(3)
    ]  # fmt: skip
    spec = {"axes": {"frac": {}}, "tables": [{"metric": "attack.mark.detected", "rows": "frac", "count": True,
                                                "digits": 2}]}  # fmt: skip
    (table,) = build_tables(StoredMatrix("m", spec, None, "now", cells, trials))
    rows = table.markdown().splitlines()
    assert rows[2] == "| 0.1 | 2 / 3 |" and rows[3] == "| 0.2 | 0.83 ± 0.17 |"


def test_paper_numbers_sit_beside_ours_and_unmatched_ones_are_named():
    cells = [StoredCell(f"c{i}", i, {"frac": f}, 2, {}) for i, f in enumerate(["0.1", "0.2"])]
    trials = [
        {"cell_id": c.cell_id, "trial": t, "status": "ok",
         "metrics": {"detection.knn.auroc": 0.5 + 0.1 * i + 0.02 * t, "victim.clean_accuracy": 0.9}}
        for i, c in enumerate(cells) for t in range(2)
    ]  # fmt: skip
    spec = {
        "axes": {"frac": {}},
        "tables": [
            {"metric": "detection.{detector}.auroc", "rows": "detector", "columns": "frac", "digits": 2,
             "paper": {"knn": {"0.2": 0.93}, "strip": {"0.1": 0.5}}},
            {"metric": "victim.clean_accuracy", "rows": "frac", "scale": 100, "digits": 0,
             "paper": {"0.1": 99, "0.2": "99 (ResNet)"}},
        ],
    }  # fmt: skip
    auroc, acc = build_tables(StoredMatrix("m", spec, None, "now", cells, trials))
    md = auroc.markdown().splitlines()
    assert md[0] == "| detector | 0.1 | 0.2 | 0.2: paper |"
    assert md[2] == "| knn | 0.51 ± 0.01 | 0.61 ± 0.01 | 0.93 |"
    assert md[-1] == "Paper values with no row or column here: strip."
    assert auroc.csv_text().splitlines()[0].endswith("0.2 n,0.2: paper")
    rows = acc.markdown().splitlines()
    assert rows[0] == "| frac | ours | paper |"
    assert rows[2:4] == ["| 0.1 | 90 ± 0 | 99 |", "| 0.2 | 90 ± 0 | 99 (ResNet) |"]


def test_a_matched_column_takes_the_candidate_closest_in_accuracy_per_row():
    """Seed 003's Rand*: per detector row, the noise level whose mean accuracy is closest to Mendata's; its
    success is shown under the new column, and the note names each choice."""
    cells = [StoredCell(f"c{i}", i, {"detector": d}, 2, {}) for i, d in enumerate(["R 0.1", "R 0.5"])]
    acc = {
        "c0": {"Rand(1)": 0.90, "Rand(3)": 0.80, "Mendata": 0.81},
        "c1": {"Rand(1)": 0.90, "Rand(3)": 0.80, "Mendata": 0.88},
    }
    asr = {"Rand(1)": 0.7, "Rand(3)": 0.4, "Mendata": 0.1}
    trials = [
        {"cell_id": c.cell_id, "trial": t, "status": "ok",
         "metrics": {**{f"purification.{p}.clean_accuracy": a for p, a in acc[c.cell_id].items()},
                     **{f"purification.{p}.gm.success": v for p, v in asr.items()}}}
        for c in cells for t in range(2)
    ]  # fmt: skip
    matched = {"label": "Rand*", "dimension": "purifier", "among": ["Rand(1)", "Rand(3)"], "to": "Mendata",
               "by": "purification.{purifier}.clean_accuracy"}  # fmt: skip
    table = {"metric": "purification.{purifier}.gm.success", "rows": "detector", "columns": "purifier",
             "digits": 1, "matched": [matched]}  # fmt: skip
    spec = {"axes": {"detector": {}}, "tables": [table]}
    (table,) = build_tables(StoredMatrix("m", spec, None, "now", cells, trials))
    md = table.markdown().splitlines()
    assert md[0] == "| detector | Rand(1) | Rand(3) | Rand* | Mendata |"
    assert md[2] == "| R 0.1 | 0.7 ± 0.0 | 0.4 ± 0.0 | 0.4 ± 0.0 | 0.1 ± 0.0 |"  # 0.80 is closest to 0.81
    assert md[3] == "| R 0.5 | 0.7 ± 0.0 | 0.4 ± 0.0 | 0.7 ± 0.0 | 0.1 ± 0.0 |"  # 0.90 is closest to 0.88
    assert "R 0.1: Rand(3); R 0.5: Rand(1)." in md[-1]


def test_bench_writes_the_result_file_with_the_paper_and_the_command(tmp_path, capsys):
    raw = tiny_matrix(
        trials=1,
        title="Tiny reproduction",
        notes="Our setting: digits.",
        reference={"source": "Nobody 2020, Table 9", "setting": "a bigger model"},
        axes={"fraction": {"key": "attacks[0].fraction", "values": [0.05, 0.2]}},
        tables=[
            {
                "metric": "detection.{detector}.auroc",
                "rows": "detector",
                "columns": "fraction",
                "paper": {"knn": {"0.2": 0.9}},
            }
        ],  # fmt: skip
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = tmp_path / "results" / "tiny.md"
    db = tmp_path / "run" / "results.db"
    args = [str(path), "--db", str(db), "--executor", "inline", "--quiet", "--result", str(result)]
    assert main(["bench", *args]) == 0
    text = result.read_text()
    assert text.startswith("# Tiny reproduction\n")
    assert f"`poisonlab bench {path} --trials 1 --result {result}`" in text
    assert "Paper: Nobody 2020, Table 9." in text and "a bigger model" in text
    assert "Our setting: digits." in text
    assert "| detector | 0.05 | 0.2 | 0.2: paper |" in text and "torch_threads" not in text
    assert "Machine: " in text and " thread(s) per trial" in text
    again = tmp_path / "again.md"
    assert main(["report", str(db), "--quiet", "--result", str(again)]) == 0
    assert again.read_text().replace(str(again), "X") == text.replace(str(result), "X")
    # refused before any work: a folder as the result file, or with --no-report
    for bad in (["--result", str(tmp_path)], ["--result", str(result), "--no-report"]):
        assert main(["bench", str(path), "--db", str(tmp_path / "x.db"), "--executor", "inline", *bad]) == 2
        assert "--result" in capsys.readouterr().err and not (tmp_path / "x.db").exists()


def test_report_and_executor_errors_are_one_line(tmp_path, capsys, monkeypatch):
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    for path in (junk, tmp_path / "missing.db"):
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(PoisonlabError, match=r"poisonlab\[ray\]"):
        make_executor("ray")
    with pytest.raises(PoisonlabError, match="--workers"):
        make_executor("pool", workers=0)


def test_line_progress_reports_done_running_failed_and_eta():
    stream = io.StringIO()
    progress = Progress(3, {"c1": "frac=0.1"}, stream, tty=False)
    progress.update({"cell_id": "c1", "trial": 0, "status": "ok", "duration": 1.0}, running=2)
    progress.update({"cell_id": "c1", "trial": 1, "status": "failed", "error": "Boom: x", "duration": 0.5}, 1)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("poisonlab: [1/3] frac=0.1 trial 0 ok in 1.0s; running 2, failed 0, ETA ")
    assert "[2/3] frac=0.1 trial 1 FAILED (Boom: x)" in lines[1] and "failed 1" in lines[1]


def test_a_second_driver_on_the_same_database_is_refused(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    db = tmp_path / "results.db"
    with open(tmp_path / "results.db.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(PoisonlabError, match="another `poisonlab bench` is running"):
            run_bench(build_matrix(tiny_matrix()), db, executor="inline", quiet=True)
    assert not db.exists()


# ---------------------------------------------------------------- running


def test_bench_cli_inline_records_failures_and_goes_on(tmp_path, capsys, monkeypatch):
    import poisonlab.experiment

    raw = tiny_matrix(trials=1)
    raw["axes"]["fraction"] = {
        "key": "attacks[0]",
        "values": [
            {"name": "label_flip_random", "fraction": 0.05},
            {"name": "label_flip_targeted", "source": 3, "target": 9, "count": 50},  # fails when run (below)
        ],
    }
    run_trial = poisonlab.experiment.run_trial

    def failing(config, *args, **kwargs):  # an error no check before the run can see
        if config.attacks[0]["name"] == "label_flip_targeted":
            raise ConfigError("label_flip_targeted: 5000 rows asked at run time")
        return run_trial(config, *args, **kwargs)

    monkeypatch.setattr(poisonlab.experiment, "run_trial", failing)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw))
    db = tmp_path / "run" / "results.db"
    assert main(["bench", str(path), "--db", str(db), "--executor", "inline"]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "2 failed" in err
    rows = stored(db)
    assert len(rows) == 4 and sorted(r[2] for r in rows) == ["failed", "failed", "ok", "ok"]
    with sqlite3.connect(db) as conn:
        errors = [e for (e,) in conn.execute("SELECT error FROM trials WHERE status = 'failed'")]
    assert all("ConfigError" in e and "5000" in e for e in errors)
    out = tmp_path / "run"
    html = (out / "report.html").read_text()
    assert "Failed trials" in html and "data:image/png;base64," in html
    assert "2 failed" in (out / "tables.md").read_text()
    # the report command rebuilds everything from the database alone
    assert main(["report", str(db), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert (tmp_path / "again" / "tables.md").read_text().split("\n", 1)[1] == (
        (out / "tables.md").read_text().split("\n", 1)[1]
    )
    trials_csv = (tmp_path / "again" / "trials" / "tiny.csv").read_text().splitlines()
    assert trials_csv[0].startswith("cell_id,fraction,victim,trial,seed,status") and len(trials_csv) == 5
    # --keep-failed: nothing to do; otherwise the failed trials are retried and replace their rows
    assert (
        main(["bench", str(path), "--db", str(db), "--executor", "inline", "--keep-failed", "--quiet"]) == 0
    )
    assert main(["bench", str(path), "--db", str(db), "--executor", "inline", "--quiet"]) == 1
    assert len(stored(db)) == 4


def test_pool_and_ray_store_the_same_metrics_and_reruns_skip(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'poisonlab[ray]')")
    matrix = build_matrix(tiny_matrix(trials=1))
    pool = run_bench(matrix, tmp_path / "pool.db", executor="pool", workers=2, quiet=True)
    assert pool.ran == 4 and pool.failed == 0 and pool.complete
    again = run_bench(matrix, tmp_path / "pool.db", executor="pool", workers=2, quiet=True)
    assert again.ran == 0 and again.stored == 4
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        via_ray = run_bench(matrix, tmp_path / "ray.db", executor="ray", quiet=True)
    finally:
        ray.shutdown()
    assert via_ray.ran == 4 and via_ray.failed == 0
    a, b = stored(tmp_path / "pool.db"), stored(tmp_path / "ray.db")
    assert [r[:3] for r in a] == [r[:3] for r in b]
    for ra, rb in zip(a, b):
        ma, mb = json.loads(ra[3]), json.loads(rb[3])
        assert ma.keys() == mb.keys() and ma == pytest.approx(mb, rel=1e-9, abs=1e-12)
    with sqlite3.connect(tmp_path / "ray.db") as conn:
        workers = {w.split(":")[1] for (w,) in conn.execute("SELECT worker FROM trials")}
    assert str(os.getpid()) not in workers  # ran in Ray worker processes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_and_stores_each_trial_once(tmp_path, sig):
    raw = tiny_matrix(trials=4)
    raw["base"] = {**BASE, "model": "mlp", "train": {"epochs": 6, "batch_size": 32}}
    raw["axes"] = {"fraction": {"key": "attacks[0].fraction", "values": [0.05, 0.2]}}
    raw["tables"] = [{"metric": "detection.{detector}.auroc", "rows": "detector", "plot": False}]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw))
    db = tmp_path / "results.db"
    cmd = [sys.executable, "-m", "poisonlab.cli", "bench", str(path), "--db", str(db), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists() and _count(db):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"bench ended before it could be killed: {proc.communicate()}"
        if sig == signal.SIGKILL:  # a report while the run is going on
            write_outputs(db, tmp_path / "mid")
            assert "pending" in (tmp_path / "mid" / "tables.md").read_text()
            assert "incomplete: a run may be in progress" in (tmp_path / "mid" / "report.html").read_text()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 143), err
    if sig == signal.SIGTERM:
        assert "terminated; finished trials are in" in err
    before = stored(db)
    assert 1 <= len(before) < 8 and all(r[2] == "ok" for r in before)
    workers = {int(w.split(":")[1]) for (w,) in sqlite3.connect(db).execute("SELECT worker FROM trials")}
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "pool workers outlived the killed driver"

    assert main(["bench", str(path), "--db", str(db), "--executor", "inline", "--quiet", "--no-report"]) == 0
    after = stored(db)
    assert len(after) == 8 and len({(r[0], r[1]) for r in after}) == 8
    assert all(r[2] == "ok" for r in after)
    assert set(before) <= set(after)  # finished trials were not run again (same metrics, same finish time)


def _count(db) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is being created
        return 0
