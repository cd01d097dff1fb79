"""TracInCP at MNIST scale: poisonlab's TracInCP against Captum's, side by side in one run.

Both tools score the same model, the same K checkpoints (with different learning rates), the same
training rows and test points, over all parameters. Every measurement runs in a fresh worker process
(single-threaded, so peak memory is that call's own), the tools alternate, and the table reports
median times, their ratio, peak memory and the largest relative difference of the scores against
ours (|a - b|.max() / |ours|.max()). Captum's exact modes: ``sample_wise_grads_per_batch=True`` (its
fastest) and its default (per-sample autograd loop). Captum runs are skipped where they would take
too long on this machine (the table says so); ours run at every size under the memory budget.

Beside the tools, the *floor* every exact method pays is timed in the same run: the model's own batched
forward and backward pass (parameter gradients, 128 rows a batch) over the same rows and checkpoints, and for
the influence matrix also over the test rows plus the dense products N x P x M of the parameters whose
per-sample gradients poisonlab materialises. Models: poisonlab's ``cnn`` and ``mlp`` and two held-out
convolution-heavy shapes defined here, not in poisonlab (``convnet``: four 3x3 convolutions 32-32-64-64,
global average pooling, one small Linear; ``convnet_bn``: the same with batch norm). Captum's fast mode
covers only Conv2d and Linear layers (batch-norm parameters are left out); poisonlab covers every
parameter, so on ``convnet_bn`` the score difference is taken against poisonlab restricted to Captum's
layers (computed untimed).

    python benchmarks/tracin_vs_captum.py [--sizes 2000,10000,60000] [--tests 100,1000] [--repeats 3]
    python benchmarks/tracin_vs_captum.py --models convnet,convnet_bn --sizes 10000 --repeats 2 \
        --out benchmarks/results/tracin_vs_captum_held_out.md

Writes benchmarks/results/tracin_vs_captum.md. Needs the `bench` extra (captum).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import add_data_root, command_line, held_out_cnn, provenance, write_result

from poisonlab.bench.tables import markdown_table

HERE = Path(__file__).resolve().parent
LRS = [0.1, 0.05, 0.01]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(name: str, input_shape=(1, 28, 28)) -> torch.nn.Module:
    """poisonlab's models by name, or a held-out shape of this benchmark (seed 0)."""
    from poisonlab.models import build_model

    if name in ("convnet", "convnet_bn"):
        return held_out_cnn(name == "convnet_bn", input_shape[0])
    return build_model(name, input_shape, 10, seed=0)


def captum_layers(model: torch.nn.Module) -> list[str]:
    """The modules with parameters whose per-sample gradients Captum's fast mode computes."""
    kinds = (torch.nn.Conv2d, torch.nn.Linear)
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def floor(model, checkpoints, train, test, what: str, budget: str) -> None:
    """The work every exact method pays: forward + backward (parameter gradients) over the rows at each
    checkpoint, and for the influence matrix the test rows too and the dense products of the parameters
    poisonlab materialises (random matrices of the same shapes)."""
    import torch.nn.functional as F

    from poisonlab.detection import TracInCP

    dense = 0
    if what == "influence":
        engine = TracInCP(model, checkpoints, memory_budget=budget)
        engine._setup(train, len(test))
        for layer in engine._layers:
            if layer.kind == "bn":
                dense += layer.din * layer.dout
                continue
            dense += layer.din * layer.dout * (layer.weight and layer.mode == "materialise")
            dense += layer.dout * layer.bias
        dense += sum(model.get_parameter(n).numel() for n in engine._fallback)
        left = torch.randn(1024, dense, device=test.x.device)
        right = torch.randn(dense, len(test), device=test.x.device)
    sets = [train] + ([test] if what == "influence" else [])
    for ck in checkpoints:
        model.load_state_dict(ck.state)
        for rows in sets:
            for x, y in zip(rows.x.split(128), rows.y.split(128)):
                model.zero_grad()
                F.cross_entropy(model(x), y, reduction="sum").backward()
        for start in range(0, len(train) if dense else 0, 1024):
            left[: min(1024, len(train) - start)] @ right


def sync() -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def worker(spec: dict) -> dict:
    """One measurement: load model, checkpoints and data, run one tool once, save the scores."""
    torch.set_num_threads(1)
    from poisonlab.data import load_mnist, stratified_subset
    from poisonlab.training import Checkpoint

    work = Path(spec["work"])
    train_full = load_mnist(spec["data_root"], "train")
    train = train_full.subset(torch.arange(spec["n"])) if spec["n"] < len(train_full) else train_full
    test = stratified_subset(load_mnist(spec["data_root"], "test"), spec["m"], seed=1)
    device = torch.device(spec.get("device", "cpu"))
    model = build(spec["model"], train.input_shape).eval().to(device)
    train, test = train.to(device), test.to(device)
    states = [
        torch.load(work / f"{spec['model']}_ck{i}.pt", weights_only=True, map_location=device)
        for i in range(len(LRS))
    ]
    checkpoints = [Checkpoint(i, lr, s) for i, (lr, s) in enumerate(zip(LRS, states))]
    base = _rss_bytes()
    sync()
    start = time.perf_counter()
    if spec["tool"] == "floor":
        floor(model, checkpoints, train, test, spec["what"], spec["budget"])
        scores = torch.zeros(1)
    elif spec["tool"] == "poisonlab":
        from poisonlab.detection import TracInCP

        engine = TracInCP(model, checkpoints, memory_budget=spec["budget"])
        scores = (
            engine.influence(train, test) if spec["what"] == "influence" else engine.self_influence(train)
        )
    else:
        from captum.influence import TracInCP as CaptumTracInCP

        def load(net, name):
            net.load_state_dict(checkpoints[int(name)].state)
            return checkpoints[int(name)].lr

        fast = spec["tool"] == "captum-fast"
        tracin = CaptumTracInCP(
            model,
            torch.utils.data.TensorDataset(train.x, train.y),
            checkpoints=[str(i) for i in range(len(checkpoints))],
            checkpoints_load_func=load,
            loss_fn=torch.nn.CrossEntropyLoss(reduction="sum" if fast else "none"),
            batch_size=256,
            sample_wise_grads_per_batch=fast,
        )
        if spec["what"] == "influence":
            scores = tracin.influence((test.x, test.y), k=None).T
        else:
            scores = tracin.self_influence(inputs=None)
    sync()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    out = work / f"scores_{spec['key']}.npy"
    np.save(out, scores.detach().float().cpu().numpy())
    result = {"seconds": seconds, "peak_mib": peak / 2**20, "scores": str(out)}
    layers = captum_layers(model)
    with_params = [m for m in model.modules() if list(m.parameters(recurse=False))]
    if spec["tool"] == "poisonlab" and len(layers) < len(with_params):
        from poisonlab.detection import TracInCP  # untimed: the same layers as Captum's, for the difference

        engine = TracInCP(model, checkpoints, layers=layers, memory_budget=spec["budget"])
        same = engine.influence(train, test) if spec["what"] == "influence" else engine.self_influence(train)
        result["scores_captum_layers"] = str(work / f"scores_{spec['key']}_captum_layers.npy")
        np.save(result["scores_captum_layers"], same.detach().float().cpu().numpy())
    return result


def run_worker(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_checkpoints(data_root: str, work: Path, models: list[str]) -> None:
    """Train each model briefly on MNIST, keeping K checkpoints with different learning rates."""
    from poisonlab.data import load_mnist, stratified_subset
    from poisonlab.training import TrainConfig, train

    data = stratified_subset(load_mnist(data_root, "train"), 6000, seed=0)
    for name in models:
        model = build(name, data.input_shape)
        for i, lr in enumerate(LRS):
            run = train(model, data, TrainConfig(lr=lr, epochs=1, batch_size=64), seed=i)
            torch.save(run.checkpoints[-1].state, work / f"{name}_ck{i}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(parser)
    parser.add_argument("--sizes", default="500,2000,10000,60000")
    parser.add_argument("--tests", default="100,1000")
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", default="4GB", help="poisonlab's memory budget")
    parser.add_argument(
        "--captum-limit", type=float, default=2e13,
        help="skip Captum's fast mode where rows x tests x params x checkpoints is above this",
    )  # fmt: skip
    parser.add_argument(
        "--default-limit", type=float, default=6e8,
        help="run Captum's default (per-sample loop) mode only where rows x params is at most this",
    )  # fmt: skip
    parser.add_argument(
        "--single-run-above", type=float, default=1e12,
        help="measure a tool once (not --repeats times) where its estimated work is above this",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu.py)")
    parser.add_argument("--out", default=str(HERE / "results" / "tracin_vs_captum.md"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    torch.set_num_threads(1)
    command = command_line("tracin_vs_captum.py", parser, args, skip=("data_root",))
    models = args.models.split(",")
    work = Path(tempfile.mkdtemp(prefix="tracin_bench_"))
    make_checkpoints(args.data_root, work, models)
    rows = []
    for model_name in models:
        net = build(model_name)
        n_params = sum(p.numel() for p in net.parameters())
        n_captum = sum(p.numel() for name in captum_layers(net) for p in net.get_submodule(name).parameters())
        for n in [int(s) for s in args.sizes.split(",")]:
            for what, m in [("influence", int(t)) for t in args.tests.split(",")] + [("self_influence", 0)]:
                work_units = n * max(m, 1) * n_params * len(LRS)
                tools = ["floor", "poisonlab", "captum-fast", "captum-default"]
                times: dict[str, list[float]] = {t: [] for t in tools}
                peaks: dict[str, float] = {}
                scores: dict[str, str] = {}
                skipped = {}
                if work_units > args.captum_limit:
                    skipped["captum-fast"] = True
                if n * n_params > args.default_limit:
                    skipped["captum-default"] = True
                ours_work = work_units / 20  # factorised products: a rough estimate
                for rep in range(args.repeats):
                    for tool in tools if rep % 2 == 0 else tools[::-1]:
                        single = (ours_work if tool == "poisonlab" else work_units) > args.single_run_above
                        if tool in skipped or (rep > 0 and (single or tool == "captum-default")):
                            continue  # long runs (and Captum's per-sample loop) are measured once
                        spec = {"tool": tool, "model": model_name, "n": n, "m": max(m, 1), "what": what,
                                "work": str(work), "data_root": args.data_root, "budget": args.budget,
                                "device": args.device,
                                "key": f"{tool}_{model_name}_{n}_{m}_{what}"}  # fmt: skip
                        result = run_worker(spec)
                        times[tool].append(result["seconds"])
                        peaks[tool] = max(peaks.get(tool, 0.0), result["peak_mib"])
                        scores[tool] = result["scores"]
                        if "scores_captum_layers" in result:
                            scores["poisonlab-captum-layers"] = result["scores_captum_layers"]
                        print(
                            f"{model_name} N={n} M={m} {what} {tool}: {result['seconds']:.2f}s",
                            file=sys.stderr,
                        )
                ours = np.load(scores["poisonlab"])
                row = {"model": model_name, "params": n_params, "captum_params": n_captum, "n": n, "m": m,
                       "what": what}  # fmt: skip
                for tool in tools:
                    if tool in skipped or not times[tool]:
                        row[tool] = None
                        continue
                    theirs = np.load(scores[tool])
                    same = ours  # Captum's fast mode leaves batch norm out: compare over its layers
                    if tool == "captum-fast" and "poisonlab-captum-layers" in scores:
                        same = np.load(scores["poisonlab-captum-layers"])
                    diff = float(np.abs(theirs - same).max() / max(np.abs(same).max(), 1e-30))
                    row[tool] = {"median": statistics.median(times[tool]), "peak": peaks[tool], "diff": diff,
                                 "runs": len(times[tool])}  # fmt: skip
                rows.append(row)
                for path in scores.values():
                    Path(path).unlink(missing_ok=True)
                write_table(rows, args, command, quiet=True)  # a partial table survives an interrupted run
    write_table(rows, args, command)


HEADER = ["model (params: ours / Captum's)", "N", "M", "scores", "floor", "poisonlab", "ours / floor",
          "Captum fast", "speed-up", "max rel diff",
          "Captum default", "speed-up", "max rel diff"]  # fmt: skip


def table_row(r: dict) -> list[str]:
    """One row of the table: the setting, then time, speed-up and score difference per tool."""
    m = str(r["m"]) if r["what"] == "influence" else "-"
    cells = [f"{r['model']} ({r['params']:,} / {r.get('captum_params', r['params']):,})", f"{r['n']:,}", m,
             r["what"]]  # fmt: skip
    for tool in ("floor", "poisonlab", "captum-fast", "captum-default"):
        v = r.get(tool)
        if tool == "floor":
            cells.append("-" if v is None else f"{v['median']:.2f} s")
            continue
        cells.append("skipped" if v is None else f"{v['median']:.2f} s ({v['runs']}x), {v['peak']:.0f} MiB")
        if tool == "poisonlab":
            cells.append("-" if r.get("floor") is None else f"{v['median'] / r['floor']['median']:.2f}x")
        else:
            cells.append("-" if v is None else f"**{v['median'] / r['poisonlab']['median']:.1f}x**")
            cells.append("-" if v is None else f"{v['diff']:.1e}")
    return cells


def write_table(rows: list[dict], args, command: str, quiet: bool = False) -> None:
    from importlib.metadata import version

    lines = [
        "# TracInCP: poisonlab vs Captum",
        "",
        provenance(command)
        + f" Captum {version('captum')}; 1 thread per process, each measurement in a fresh process, tools "
        f"alternated; median of up to {args.repeats} runs (the number is in brackets; long runs and "
        "Captum's per-sample default mode once).",
        "",
        f"Settings: MNIST training rows (first N) and M stratified test rows; K = {len(LRS)} checkpoints "
        f"(learning rates {LRS}); all parameters; poisonlab memory budget {args.budget}; Captum batch size "
        "256. Peak = peak resident memory of the call above the process's memory before it. "
        "'speed-up' = Captum's time / ours. 'max rel diff' = max |Captum - ours| / max |ours|. "
        "Captum's default mode (a Python loop of autograd calls per sample) runs only at the smaller sizes, "
        "Captum's fast mode up to N = 10,000; beyond, their times would be hours on this machine. "
        "'floor' = the model's own batched forward + backward pass (parameter gradients, 128 rows a batch) "
        "over the same rows and checkpoints, for the influence matrix also over the test rows plus the dense "
        "products of the parameters poisonlab materialises: the work every exact method pays, timed in the "
        "same run; 'ours / floor' = our time / the floor's. convnet and convnet_bn are held-out shapes "
        "defined in the benchmark, not poisonlab models. Captum's fast mode covers only Conv2d and Linear "
        "layers (the params column: ours / Captum's): on convnet_bn it leaves the batch-norm parameters out "
        "and poisonlab does not, so there its difference is taken against poisonlab restricted to Captum's "
        "layers.",
        "",
        markdown_table(HEADER, [table_row(r) for r in rows]),
    ]
    write_result(args.out, lines, quiet=quiet)


if __name__ == "__main__":
    main()
