"""Helpers shared by the benchmark scripts (each runs as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from torch import nn

HERE = Path(__file__).resolve().parent


def provenance(command: str) -> str:
    """One line for a result file: date, machine, torch and its thread count, commit, the command."""
    from datetime import date

    from poisonlab.results import environment

    env = environment()
    return (
        f"Date: {date.today().isoformat()}. Machine: {env['machine']}, {env['cpus']} cores (shared with "
        f"other jobs), {env['device']}, torch {env['torch']} with {env['torch_threads']} thread(s), "
        f"poisonlab {env['poisonlab']} at {env['git_commit'] or 'an unknown commit'}. "
        f"Command: `{command}`."
    )


def write_result(path: str | Path, lines: list[str], quiet: bool = False) -> None:
    """Write a result file whole (poisonlab's atomic writer) and print it (``quiet``: write only, e.g. the
    partial table a long run rewrites after each row)."""
    from poisonlab.results import write_atomic

    text = "\n".join(lines) + "\n"
    if not quiet:
        print(text)
    write_atomic(path, text)


def command_line(
    script: str,
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    skip: tuple[str, ...] = ("data_root", "out"),
) -> str:
    """``python benchmarks/SCRIPT`` with the options whose value differs from the parser's default, for
    :func:`provenance` (``skip``: options that say where, not what: the data folder, the output file)."""
    return f"python benchmarks/{script}" + "".join(
        f" --{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k not in skip and parser.get_default(k) != v
    )


def add_data_root(parser: argparse.ArgumentParser) -> None:
    """``--data-root``: $POISONLAB_DATA, else the shared data folder beside the checkout."""
    parser.add_argument(
        "--data-root",
        default=os.environ.get("POISONLAB_DATA", str(HERE.parent.parent / "shared/data")),
        help="folder with MNIST/ and the CIFAR-10 batches (default: $POISONLAB_DATA)",
    )


def held_out_cnn(batch_norm: bool, in_channels: int = 1, classes: int = 10) -> nn.Module:
    """A convolution-heavy CNN that is not one of poisonlab's models (speed is also measured on shapes the
    project did not design): 3x3 convolutions 32-32-64-64 (with batch norm if asked), max pooling after the
    second and fourth, global average pooling, one Linear layer. Seed 0."""
    import torch

    torch.manual_seed(0)
    layers, c = [], in_channels
    for i, width in enumerate([32, 32, 64, 64]):
        layers += [nn.Conv2d(c, width, 3, padding=1)] + ([nn.BatchNorm2d(width)] if batch_norm else [])
        layers += [nn.ReLU()] + ([nn.MaxPool2d(2)] if i % 2 else [])
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


def art_classifier(module: nn.Module, input_shape, num_classes: int):
    """Wrap a torch model for IBM's Adversarial Robustness Toolbox (CPU, inputs in [0, 1])."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=module,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(input_shape),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
