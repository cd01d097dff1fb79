"""Seed 002's timing table: time per crafting step of first-order poisoning vs MetaPoison, same model, and
the influence-function attack (Koh & Liang 2017) that seed 002 calls the second-order approach.

For 50 and 500 poisons on MNIST (a 10,000-image stratified subset: 1,000 rows per class, so 500 poisons
fit in one adversarial class), each of our two objectives is built on the same trained surrogate (one model,
as in the seed's table: "on a single model") and one crafting step is timed: the objective on all poisons
and its gradient with respect to them (first-order: two forward/backward passes at theta and
theta + delta_theta; MetaPoison: K = 2 unrolled SGD steps on the poisons plus a 64-row clean batch, then the
target loss differentiated through them; influence function: the poisons' parameter gradient dotted with
the fixed inverse-HVP s, differentiated in the poisons, i.e. a double backward). The influence attack also
pays once per surrogate for s = (H + damping)^-1 grad L(x_t): its defaults (100 CG iterations on 1,000
rows) timed separately. One thread, the methods alternated, median over repeats.
Writes benchmarks/results/first_order_vs_metapoison.md.

    python benchmarks/first_order_vs_metapoison.py [--data-root DIR] [--repeats R] [--models cnn,resnet18]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import add_data_root, command_line, provenance, write_result

from poisonlab.attacks import FirstOrder, InfluenceFunction, MetaPoison
from poisonlab.bench.tables import markdown_table
from poisonlab.data import load_dataset, stratified_subset
from poisonlab.models import build_model
from poisonlab.training import TrainConfig, train

HERE = Path(__file__).resolve().parent
SEED_TABLE = {  # seed 002, seconds per crafting step on one TITAN GPU: (MetaPoison, ours) at 50 / 500 poisons
    "ConvNetBN": {50: (13.5, 9.3), 500: (25.4, 16.0)},
    "VGG-13": {50: (35.5, 22.3), 500: (71.7, 36.4)},
    "ResNet-20": {50: (48.6, 30.1), 500: (95.4, 48.1)},
}
MODELS = {"cnn": {}, "resnet18": {"width": 16}}
HEADER = [
    "model", "poisons", "first-order (s/step)", "MetaPoison (s/step)", "influence (s/step)",
    "influence solve (s)", "first-order / MetaPoison", "seed 002 ratio", "first-order / influence",
]  # fmt: skip


def table_row(name: str, count: int, f: float, m: float, i: float, solve: float) -> list:
    """Our step times, the influence attack's one-off solve, the ratios, and the range of the seed's ratios
    (ours / MetaPoison) there."""
    seed_ratios = [v[count][1] / v[count][0] for v in SEED_TABLE.values()]
    lo, hi = min(seed_ratios), max(seed_ratios)
    return [
        name, count, f"{f:.3f}", f"{m:.3f}", f"{i:.3f}", f"{solve:.1f}", f"{f / m:.2f}x",
        f"{lo:.2f}-{hi:.2f}x", f"{f / i:.2f}x",
    ]  # fmt: skip


def step_time(attack, model, train_set, test_set, count: int, repeats: int) -> tuple[list[float], float]:
    """Seconds of ``repeats`` crafting steps, and of building the objective (the influence attack's solve)."""
    generator = torch.Generator().manual_seed(0)
    index, y_adv = attack.choose_target(test_set, train_set.num_classes, generator)
    x_t = test_set.x[index : index + 1]
    idx = (train_set.y == y_adv).nonzero().flatten()[:count]
    base, labels = train_set.x[idx], train_set.y[idx]
    start = time.perf_counter()
    objective = attack.objective([model], x_t, y_adv, base, labels, train_set, generator)
    build = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        x = base.clone().requires_grad_(True)
        start = time.perf_counter()
        (grad,) = torch.autograd.grad(objective(x), x)
        times.append(time.perf_counter() - start)
    return times, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=str(HERE / "results" / "first_order_vs_metapoison.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_set = stratified_subset(load_dataset("mnist", args.data_root, split="train"), 10_000, seed=0)
    test_set = stratified_subset(load_dataset("mnist", args.data_root, split="test"), 1000, seed=0)
    rows = []
    for name in args.models.split(","):
        model = build_model(name, train_set.input_shape, 10, seed=0, **MODELS[name])
        model = train(model, train_set, TrainConfig(epochs=1), seed=0).model.eval()
        # the solve does not depend on the poisons: timed once per model, then the step with a cheap solve
        _, solve = step_time(InfluenceFunction(target_index=0), model, train_set, test_set, 1, 0)
        cheap = InfluenceFunction(target_index=0, cg_iters=1, hessian_rows=10)
        for count in (50, 500):
            fo, mp, inf = [], [], []
            for _ in range(args.repeats):  # alternate the three, one step each, after a warm-up step
                fo += step_time(FirstOrder(target_index=0), model, train_set, test_set, count, 2)[0][1:]
                mp += step_time(MetaPoison(target_index=0), model, train_set, test_set, count, 2)[0][1:]
                inf += step_time(cheap, model, train_set, test_set, count, 2)[0][1:]
            f, m, i = statistics.median(fo), statistics.median(mp), statistics.median(inf)
            rows.append((name, count, f, m, i, solve))
            print(f"{name} {count}: first-order {f:.3f}s, MetaPoison {m:.3f}s, influence {i:.3f}s "
                  f"(solve {solve:.1f}s once)", flush=True)  # fmt: skip
    lines = [
        "# Seed 002: time per crafting step, first-order poisoning vs MetaPoison and the influence-function "
        "attack",
        "",
        provenance(command_line("first_order_vs_metapoison.py", parser, args))
        + f" Repeats: {args.repeats} timed step(s) per method, model and poison count.",
        "",
        "Settings: MNIST 10,000-image subset; one surrogate per model (trained 1 epoch; the time does not "
        "depend on it); one crafting step = objective on all poisons + gradient w.r.t. them; first-order: "
        "two passes (theta and theta + delta_theta); MetaPoison: K = 2 unrolled SGD steps on the poisons + a "
        "64-row clean batch, then the target loss through them (second order); influence function (Koh & "
        "Liang 2017): the poisons' parameter gradient dotted with the fixed s = (H + 0.01)^-1 grad L(x_t, "
        "y_adv), differentiated in the poisons (a double backward); its solve for s (100 CG iterations, H "
        "over 1,000 training rows, all parameters: it does not depend on the poisons) is timed once per "
        "model and paid once per surrogate (again at each surrogate refresh). All in float32, the models "
        "in eval mode. Median over the repeats, the three methods alternated. `resnet18` is the CIFAR "
        "ResNet-18 at width 16. The seed timed ConvNetBN / VGG-13 / ResNet-20 on a TITAN GPU at 50/50,000 "
        "and 500/50,000 poisons.",
        "",
        markdown_table(HEADER, [table_row(*row) for row in rows]),
    ]
    write_result(args.out, lines)


if __name__ == "__main__":
    main()
