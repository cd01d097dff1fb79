"""Time per crafting step of gradient matching and first-order poisoning against the step's own floor.

The floor of a step is the autograd work no implementation can skip, written as plain torch in this script:

* gradient matching (Witches' Brew): the poison batch's forward pass, its parameter gradient with
  ``create_graph``, the cosine to the (precomputed) adversarial target gradient and the backward pass of
  that cosine to the poisons (forward, backward, double backward);
* first-order poisoning: the poisons' forward and backward passes at theta and at theta + delta_theta (two
  models held in memory), the loss difference differentiated to the poisons.

Ours is one iteration of poisonlab's crafting loop with the attack's defaults (signed Adam, projection onto
the eps-ball, gradient matching's differentiable augmentation, first-order's watermark and color shift),
timed as the wall time of ``craft_perturbations`` over S steps divided by S. The target's gradient is
computed once per objective by both and is not timed. Models: poisonlab's ``cnn`` and ``resnet18`` (width
16) and a held-out convolution-heavy CNN with batch norm (``convnet_bn``, defined in ``_common.py``), each
on the CIFAR-10 subset, 40 and 200 poisons, one thread, ours and the floor alternated, medians.

    python benchmarks/crafting_floor.py [--data-root DIR] [--steps S] [--repeats R]

Writes benchmarks/results/crafting_floor.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import add_data_root, command_line, held_out_cnn, provenance, write_result

from poisonlab.attacks import FirstOrder, GradientMatching
from poisonlab.attacks.targeted import craft_perturbations
from poisonlab.bench.tables import markdown_table
from poisonlab.data import load_dataset, stratified_subset
from poisonlab.models import build_model

HERE = Path(__file__).resolve().parent
HEADER = ["attack", "model", "poisons", "floor (s/step)", "poisonlab (s/step)", "ours / floor", "target"]


def sync() -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gm_floor(model, x_t, y_adv, base, labels, steps: int) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    target = torch.autograd.grad(
        F.cross_entropy(model(x_t), torch.tensor([y_adv], device=x_t.device)), params
    )
    target_norm = torch.sqrt(sum(t.pow(2).sum() for t in target))
    x = base.clone().requires_grad_(True)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        grads = torch.autograd.grad(
            F.cross_entropy(model(x), labels, reduction="sum"), params, create_graph=True
        )
        inner = sum((g * t).sum() for g, t in zip(grads, target))
        loss = 1 - inner / (torch.sqrt(sum(g.pow(2).sum() for g in grads)) * target_norm)
        torch.autograd.grad(loss, x)
    sync()
    return (time.perf_counter() - start) / steps


def first_order_floor(model, x_t, y_adv, base, labels, steps: int, alpha: float) -> float:
    shifted = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(F.cross_entropy(model(x_t), torch.tensor([y_adv], device=x_t.device)), params)
    with torch.no_grad():
        for p, gi in zip([p for p in shifted.parameters() if p.requires_grad], g):
            p -= alpha * gi
    x = base.clone().requires_grad_(True)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(shifted(x), labels, reduction="sum") - F.cross_entropy(
            model(x), labels, reduction="sum"
        )
        torch.autograd.grad(loss, x)
    sync()
    return (time.perf_counter() - start) / steps


def ours(attack, model, x_t, y_adv, base, labels, train_set, steps: int) -> float:
    generator = torch.Generator().manual_seed(0)
    objective = attack.objective([model], x_t, y_adv, base, labels, train_set, generator)
    sync()
    start = time.perf_counter()
    craft_perturbations(
        base, objective, eps=attack.eps, steps=steps, lr=attack.lr, generator=generator, restarts=1,
        color_eps=attack.color_eps, augment=attack.augment, hflip=attack.hflip,
    )  # fmt: skip
    sync()
    return (time.perf_counter() - start) / steps


def measure(
    attack, model, x_t, y_adv, base, labels, train_set, steps: int, repeats: int
) -> tuple[float, float]:
    """Median seconds per step of the floor and of ours, the two alternated after one warm-up step each."""

    def floor(s: int) -> float:
        if isinstance(attack, GradientMatching):
            return gm_floor(model, x_t, y_adv, base, labels, s)
        return first_order_floor(model, x_t, y_adv, base, labels, s, attack.alpha)

    floor(1), ours(attack, model, x_t, y_adv, base, labels, train_set, 1)
    times: dict[str, list[float]] = {"floor": [], "ours": []}
    for rep in range(repeats):
        for side in ("floor", "ours") if rep % 2 == 0 else ("ours", "floor"):
            if side == "floor":
                times[side].append(floor(steps))
            else:
                times[side].append(ours(attack, model, x_t, y_adv, base, labels, train_set, steps))
    return statistics.median(times["floor"]), statistics.median(times["ours"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(parser)
    parser.add_argument("--steps", type=int, default=10, help="crafting steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="cnn,resnet18,convnet_bn")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu.py)")
    parser.add_argument("--out", default=str(HERE / "results" / "crafting_floor.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    train_set = stratified_subset(load_dataset("cifar10", args.data_root, split="train"), 2000, seed=0)
    train_set = train_set.to(device)
    test_set = load_dataset("cifar10", args.data_root, split="test").to(device)
    rows = []
    for name in args.models.split(","):
        if name == "convnet_bn":
            model = held_out_cnn(True, 3)
        else:
            model = build_model(
                name, train_set.input_shape, 10, seed=0, **({"width": 16} if name != "cnn" else {})
            )
        model.eval().to(device)
        x_t, y_adv = test_set.x[:1], int((test_set.y[0] + 1) % 10)
        pool = (train_set.y == y_adv).nonzero().flatten()
        for count in (40, 200):
            base, labels = train_set.x[pool[:count]], train_set.y[pool[:count]]
            for attack in (GradientMatching(), FirstOrder()):
                f, o = measure(attack, model, x_t, y_adv, base, labels, train_set, args.steps, args.repeats)
                label = "gradient matching" if isinstance(attack, GradientMatching) else "first-order"
                rows.append([label, name, count, f"{f:.3f}", f"{o:.3f}", f"{o / f:.2f}x", "<= 1.5x"])
                print(" | ".join(map(str, rows[-1])), flush=True)
    lines = [
        "# Crafting: time per step against its floor",
        "",
        provenance(command_line("crafting_floor.py", parser, args))
        + f" {args.steps} steps per timing, {args.repeats} timings per side, ours and the floor alternated, "
        "medians.",
        "",
        "Settings: the CIFAR-10 subset (2,000 training rows), poisons of the adversarial class, one target "
        "(test row 0, adversarial class its label + 1), models in eval mode, float32. floor = the autograd "
        "work of one step written as plain torch (gradient matching: forward, parameter gradient with "
        "create_graph, cosine to the precomputed target gradient, double backward to the poisons; "
        "first-order: forward and backward at theta and theta + delta_theta); poisonlab = one iteration of "
        "its crafting loop with the attack's defaults (signed Adam, projection, gradient matching's "
        "augmentation, first-order's color shift). Target of issue 19: at most 1.5x the floor. `resnet18` "
        "is poisonlab's CIFAR ResNet-18 at width 16; `convnet_bn` a held-out CNN defined in the benchmark.",
        "",
        markdown_table(HEADER, rows),
    ]
    write_result(args.out, lines)


if __name__ == "__main__":
    main()
