"""The speed benchmarks on a GPU, in one command (under ten minutes on a recent GPU, by design of the sizes).

Runs, with ``--device cuda``: ``tracin_vs_captum.py`` (poisonlab's ``cnn`` and the held-out ``convnet_bn``,
N = 10,000 training rows, M = 1,000 test rows, the floor and Captum's fast mode beside ours) and
``crafting_floor.py`` (a gradient-matching and a first-order step against their floors), and writes
``benchmarks/results/gpu_tracin_vs_captum.md`` and ``benchmarks/results/gpu_crafting_floor.md``. Without a
CUDA device it says so in one line and exits with status 2 (nothing written).

    python benchmarks/gpu.py [--data-root DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from _common import add_data_root

HERE = Path(__file__).resolve().parent
RUNS = [
    ["tracin_vs_captum.py", "--models", "cnn,convnet_bn", "--sizes", "10000", "--tests", "1000",
     "--repeats", "1", "--default-limit", "0", "--out", "benchmarks/results/gpu_tracin_vs_captum.md"],
    ["crafting_floor.py", "--steps", "20", "--repeats", "3",
     "--out", "benchmarks/results/gpu_crafting_floor.md"],
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(parser)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu.py: no CUDA device on this machine; nothing run", file=sys.stderr)
        sys.exit(2)
    for run in RUNS:
        command = [
            sys.executable,
            str(HERE / run[0]),
            *run[1:],
            "--device",
            "cuda",
            "--data-root",
            args.data_root,
        ]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=HERE.parent)


if __name__ == "__main__":
    main()
