"""How `poisonlab run` degrades when the cores are shared: wall time of the default job (the command of
`make run`) with torch's default thread count, with one thread, and with OpenMP's passive wait policy, on an
idle machine and beside busy processes that this script starts itself (each a one-thread matrix-product
loop, the stand-in for another user's job). Modes and loads alternate, repeats give medians.

    python benchmarks/threads.py --repeats 3 --busy 0,1 --out benchmarks/results/threads.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import command_line, provenance, write_result

BUSY = (
    "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"
)
MODES = {  # name -> (environment, options); poisonlab itself sets OMP_WAIT_POLICY=PASSIVE unless it is set
    "spin": ({"GOMP_SPINCOUNT": "300000"}, []),  # torch's default threads, libgomp's default spinning wait
    "threads 1": ({}, ["--threads", "1"]),
    "passive": ({}, []),  # torch's default threads, waiting threads sleep (poisonlab's default)
}


def timed_run(env_extra: dict[str, str], args: list[str]) -> float:
    env = {**os.environ, **env_extra}
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "poisonlab.cli", "run", "--out", str(Path(out) / "run"), *args],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", default="0,1", help="numbers of busy processes, e.g. 0,1")
    parser.add_argument("--out", default="benchmarks/results/threads.md")
    args = parser.parse_args()
    loads = [int(b) for b in args.busy.split(",")]
    times: dict[tuple[int, str], list[float]] = {}
    for busy in loads:
        hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
        try:
            time.sleep(1.0 if busy else 0.0)
            for rep in range(args.repeats):
                for mode, (env, extra) in MODES.items():
                    seconds = timed_run(env, extra)
                    times.setdefault((busy, mode), []).append(seconds)
                    print(f"busy {busy} repeat {rep + 1} {mode}: {seconds:.1f} s", flush=True)
        finally:
            for hog in hogs:
                hog.kill()
    lines = [
        "# `poisonlab run` (the default job of `make run`) on a shared machine: thread settings",
        "",
        provenance(command_line("threads.py", parser, args, skip=("out",))),
        "",
        "Wall time of the whole default job (digits, label flip, three detectors, report) in a fresh "
        "process, median of the repeats (each mode alternating with the others) with the range; `busy` "
        "other processes each run a one-thread matrix-product loop. `spin`: torch's default thread count "
        "(one per core) with libgomp's default wait (spin 300,000 times, then sleep: poisonlab before this "
        "benchmark); `threads 1`: `--threads 1`; `passive`: the default thread count with "
        "`OMP_WAIT_POLICY=PASSIVE` (waiting threads sleep at once), what poisonlab now sets unless the "
        "variable is already set.",
        "",
        "| busy processes | " + " | ".join(MODES) + " | passive / spin | passive / threads 1 |",
        "|---|" + "---|" * (len(MODES) + 2),
    ]
    for busy in loads:
        med = {mode: statistics.median(times[(busy, mode)]) for mode in MODES}
        cells = [f"{med[m]:.1f} s ({min(times[(busy, m)]):.1f}-{max(times[(busy, m)]):.1f})" for m in MODES]
        ratios = [f"{med['passive'] / med['spin']:.2f}", f"{med['passive'] / med['threads 1']:.2f}"]
        lines.append(f"| {busy} | " + " | ".join(cells + ratios) + " |")
    write_result(args.out, lines)


if __name__ == "__main__":
    main()
