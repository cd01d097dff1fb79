"""Seed 003 (Mendata) Tables 2 and 4 in small: purification against data poisoning on MNIST.

For each trial: craft the attack on an MNIST subset, train the victim on the released set (no purification),
select a reference set with each detector (simulated: precision P in {0.99, 0.998, 1.0} x recall R in
{0.1, 0.3, 0.5}; k-NN(K)), purify the untrusted rest with Ref, Random noise (sigma grid), Friendly noise
(eps grid) and Mendata, retrain a victim on reference + purified rows and measure clean accuracy and attack
success. As in seed 003 section 5.4, for each detector the sigma / eps whose mean accuracy is closest to
Mendata's is reported beside it (the whole grid is printed too). Writes benchmarks/results/purification.md.

    python benchmarks/purification.py [--data-root DIR] [--trials 2] [--train 3000] [--quick]
    python benchmarks/purification.py --attack gradient_matching --trials 4   # the targeted table

Extractors: Mendata's is the model trained on the released (manipulated) set, the same model Friendly noise
keeps the outputs of (the offline stand-in for the seed's ImageNet ResNet-18: see mendata.py); k-NN(K)'s is a
model trained on a disjoint clean MNIST split (an independent, "pretrained" extractor as in appendix B).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import add_data_root, provenance

from poisonlab.data import load_mnist, stratified_subset
from poisonlab.detection import KNNK, SimulatedDetector
from poisonlab.experiment import without_targets
from poisonlab.models import build_model
from poisonlab.purification import (
    Mendata,
    extract_features,
    friendly_noise,
    reference_quality,
    select_reference,
)
from poisonlab.registry import create
from poisonlab.training import TrainConfig, accuracy, train

HERE = Path(__file__).resolve().parent
PAPER = (
    "Seed 003 (CIFAR-10, ResNet-18, ImageNet-pretrained extractor, 20 trials): our copy of the paper has "
    "the cells of Tables 1-5 stripped; its text reports that the attacks succeed without purification "
    "(Table 1), that Mendata reaches the lowest ASR at comparable accuracy in most settings, more so with a "
    "higher precision or a lower recall (targeted: ASR 7/20 at the first setting quoted, 2/20 with R = 0.1, "
    "0/20 with P = 0.998), and that against k-NN(K) Mendata beats the baselines on the backdoor attack and "
    "only ties on the targeted one (k-NN(K)'s precision there is below a random detector's)."
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def mean_sd(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{pct(v.mean())} ± {100 * v.std():.1f}" if len(v) > 1 else pct(v.mean())


def success(attack, model, test_set, goal) -> float:
    ev = attack.evaluate(model, test_set, goal)
    return float(ev.get("success_rate", ev.get("success", float("nan"))))


def splice(base, rows_x, reference):
    """The released set with its non-reference rows replaced by ``rows_x``' (precomputed for every row)."""
    x = base.x.clone()
    x[~reference] = rows_x[~reference]
    return type(base)._trusted(x, base.y.clone(), base.classes, base.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(ap)
    ap.add_argument("--attack", choices=("badnets", "gradient_matching"), default="badnets")
    ap.add_argument("--poison", type=float, default=0.03, help="poisoned share of the training set")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument(
        "--extractor-rows", type=int, default=2000, help="disjoint clean rows of k-NN(K)'s extractor"
    )
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--precisions", default="0.99,0.998,1.0")
    ap.add_argument("--recalls", default="0.1,0.3,0.5")
    ap.add_argument("--knn-k", default="100", help="K values of k-NN(K) (rows kept per class)")
    ap.add_argument("--sigmas", default="0.1,0.3,0.5")
    ap.add_argument("--eps", default="16,32,64", help="Friendly noise radii in /255")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="1 trial, P = 1, R = 0.5 only (smoke test)")
    ap.add_argument("--out", default=str(HERE / "results" / "purification.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.trials, args.precisions, args.recalls, args.knn_k = 1, "1.0", "0.5", ""
    precisions = [float(v) for v in args.precisions.split(",")]
    recalls = [float(v) for v in args.recalls.split(",")]
    knn_ks = [int(v) for v in args.knn_k.split(",") if v]
    sigmas = [float(v) for v in args.sigmas.split(",")]
    epss = [float(v) for v in args.eps.split(",")]
    start = time.perf_counter()

    raw = Path(args.data_root) / "MNIST" / "raw"
    full = load_mnist(raw, "train")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(1234))
    train_set = stratified_subset(full.subset(perm[:30000]), args.train, seed=0)
    extractor_set = stratified_subset(full.subset(perm[30000:]), args.extractor_rows, seed=0)  # disjoint
    test_set = stratified_subset(load_mnist(raw, "test"), args.test, seed=0)
    milestones = (max(1, (3 * args.epochs) // 4),) if args.epochs > 1 else ()
    schedule = TrainConfig(epochs=args.epochs, lr=0.05, milestones=milestones)

    def fit(data, seed):
        return train(
            build_model("cnn", data.input_shape, data.num_classes, seed=seed), data, schedule, seed=seed
        )

    knn_extractor = fit(extractor_set, 99).model
    detectors = [
        (f"P={p} R={r}", SimulatedDetector(precision=p, recall=r)) for p in precisions for r in recalls
    ]
    detectors += [(f"k-NN(K={k})", KNNK(per_class=k)) for k in knn_ks]  # k: the rows per class
    rows: dict[str, dict[str, list]] = {}  # detector -> method -> list of (acc, asr) over trials
    quality: dict[str, list] = {}
    none_rows, twin_rows, critic_trace, mendata_info = [], [], None, {}

    for trial in range(args.trials):
        g = torch.Generator().manual_seed(trial)
        t0 = time.perf_counter()
        if args.attack == "badnets":
            target = int(torch.randint(10, (1,), generator=g))  # seed 003: target label drawn uniformly
            attack = create("attack", {"name": "badnets", "target": target, "fraction": args.poison})
            poisoned = attack.craft(train_set, generator=g)
        else:
            attack = create("attack", {"name": "gradient_matching", "fraction": args.poison, "eps": 16 / 255,
                                       "steps": 100, "restarts": 1, "augment": False,
                                       "train": schedule.model_dump()})  # fmt: skip
            poisoned = attack.craft(train_set, generator=g, test=test_set)
        goal = poisoned.goals[0]
        eval_set = without_targets(test_set, poisoned.goals)  # seed 003: accuracy excludes the target
        victim = fit(poisoned.data, trial).model
        twin = fit(train_set, trial).model  # the victim's twin: same seed, no poisons
        twin_rows.append((accuracy(twin, eval_set), success(attack, twin, test_set, goal)))
        none_rows.append((accuracy(victim, eval_set), success(attack, victim, test_set, goal)))
        log(f"trial {trial}: {attack.name} crafted + victim in {time.perf_counter() - t0:.0f}s: "
            f"acc {pct(none_rows[-1][0])} ASR {pct(none_rows[-1][1])}")  # fmt: skip
        # row-wise noises do not depend on the reference set: draw them once per trial for every row
        noisy = {
            s: (poisoned.data.x + s * torch.randn(poisoned.data.x.shape, generator=g)).clamp(0, 1)
            for s in sigmas
        }
        friendly = {}
        for e in epss:
            t1 = time.perf_counter()
            friendly[e], _ = friendly_noise(victim, poisoned.data.x, eps=e / 255, mu=1.0, steps=30, lr=100.0,
                                            generator=g)  # fmt: skip
            log(f"  friendly noise eps {e:g}/255 for all rows in {time.perf_counter() - t1:.0f}s")
        knn_feats = extract_features(knn_extractor, poisoned.data.x)
        for name, det in detectors:
            t1 = time.perf_counter()
            ref = select_reference(det, poisoned.data, features=knn_feats, is_poisoned=poisoned.is_poisoned,
                                   generator=g)  # fmt: skip
            quality.setdefault(name, []).append(reference_quality(ref, poisoned.is_poisoned))
            res = rows.setdefault(name, {})

            def measure(method, data, seed=trial, res=res, attack=attack, goal=goal, eval_set=eval_set):
                model = fit(data, seed).model
                res.setdefault(method, []).append(
                    (accuracy(model, eval_set), success(attack, model, test_set, goal))
                )

            measure("Ref", poisoned.data.subset(ref.nonzero().flatten()))
            for s in sigmas:
                measure(f"Rand({s:g})", splice(poisoned.data, noisy[s], ref))
            for e in epss:
                measure(f"Frien({e:g}/255)", splice(poisoned.data, friendly[e], ref))
            t2 = time.perf_counter()
            out = Mendata().purify(poisoned.data, ref, generator=g, extractor=victim)
            mendata_info.setdefault(name, []).append(
                {k: out.info[k] for k in ("rounds", "stopped", "rms_change")}
                | {"seconds": time.perf_counter() - t2}
            )
            if critic_trace is None or (trial == 0 and name == "P=1.0 R=0.5"):
                critic_trace = (name, trial, out.info["critic_values"], out.info["critic_steps"])
            measure("Mendata", out.data)
            q = quality[name][-1]
            log(f"  {name}: ref {int(q['size'])} ({int(q['poisons'])} poisons) | Ref "
                f"{pct(res['Ref'][-1][0])}/{pct(res['Ref'][-1][1])} | Mendata {pct(res['Mendata'][-1][0])}/"
                f"{pct(res['Mendata'][-1][1])} ({out.info['rounds']} rounds, "
                f"rms {out.info['rms_change']:.3f}) in {time.perf_counter() - t1:.0f}s")  # fmt: skip
        Path("/tmp/purification_partial.json").write_text(json.dumps({"rows": rows, "none": none_rows}))

    # ------------------------------------------------------------------ tables
    def pick(res, prefix):
        """The grid value whose mean accuracy is closest to Mendata's (seed 003 sec. 5.4)."""
        target = np.mean([a for a, _ in res["Mendata"]])
        keys = [k for k in res if k.startswith(prefix)]
        return min(keys, key=lambda k: abs(np.mean([a for a, _ in res[k]]) - target))

    asr_name = "ASR" if args.attack == "badnets" else "success (target misclassified)"
    head = ["detector", "ref rows (poisons)", "P / R measured"]
    lines = [
        f"| {' | '.join(head)} | method | acc (%) | {asr_name} (%) | net of the twin (pts) |",
        "|" + "---|" * (len(head) + 4),
    ]
    twin_asr = np.array([s for _, s in twin_rows])
    for name, res in rows.items():
        q = quality[name]
        qtext = f"{np.mean([x['size'] for x in q]):.0f} ({np.mean([x['poisons'] for x in q]):.1f})"
        ptext = f"{np.mean([x['precision'] for x in q]):.4f} / {np.mean([x['recall'] for x in q]):.3f}"
        chosen = ["Ref", pick(res, "Rand"), pick(res, "Frien"), "Mendata"]
        for i, method in enumerate(chosen):
            acc, asr = zip(*res[method])
            best = method == "Mendata"
            oracle = " †" if name.startswith("P=") else ""
            cells = [name + oracle, qtext, ptext] if i == 0 else ["", "", ""]
            a = mean_sd(asr)
            net = mean_sd(np.array(asr) - twin_asr).replace("±", "+-")
            lines.append(
                f"| {' | '.join(cells)} | {method} | {mean_sd(acc)} | {'**' + a + '**' if best else a} | "
                f"{net} |"
            )
    grid = ["| detector | " + " | ".join(k for k in next(iter(rows.values())) if k != "Ref") + " |"]
    grid.append("|---|" + "---|" * (len(grid[0].split("|")) - 3))
    for name, res in rows.items():
        cells = [f"{pct(np.mean([a for a, _ in v]))} / {pct(np.mean([s for _, s in v]))}"
                 for k, v in res.items() if k != "Ref"]  # fmt: skip
        grid.append(f"| {name}{' †' if name.startswith('P=') else ''} | " + " | ".join(cells) + " |")
    acc0, asr0 = zip(*none_rows)
    acc_twin, _ = zip(*twin_rows)
    minfo = [
        f"| {name} | {np.mean([i['rounds'] for i in v]):.1f} | "
        f"{', '.join(sorted({i['stopped'] for i in v}))} | {np.mean([i['rms_change'] for i in v]):.3f} | "
        f"{np.mean([i['seconds'] for i in v]):.0f} |"
        for name, v in mendata_info.items()
    ]
    total = time.perf_counter() - start
    attack_text = (
        f"BadNets (dirty-label 3x3 checkerboard patch 1 px from the bottom-right corner, all-to-one, target "
        f"drawn per trial), {100 * args.poison:g}% of the training set"
        if args.attack == "badnets"
        else f"gradient matching (Witches' Brew), {100 * args.poison:g}% poisons, eps 16/255, 100 steps, "
        "1 restart"
    )
    eps_text = ", ".join(f"{e:g}/255" for e in epss)
    md = [
        f"# Purification against data poisoning (seed 003, Mendata): Tables 2 and 4 in small ({args.attack})",
        "",
        provenance(f"python {' '.join(sys.argv)}") + f" Total {total / 60:.1f} min.",
        "",
        f"Settings: MNIST, {len(train_set)} training rows (stratified, from one half of the training split), "
        f"{len(test_set)} test rows; model `cnn`, SGD lr 0.05 momentum 0.9, {args.epochs} epochs (lr / 10 "
        f"after epoch {milestones[0] if milestones else '-'}), no augmentation; attack: {attack_text}; "
        f"{args.trials} trials (seeds 0..{args.trials - 1}: target, poisons, reference draws, noises, init). "
        f"Mendata: library defaults (alpha 0.2, lr 0.02 normalised, amplification 2, <= 30 rounds, patience "
        f"5, critic 256 hidden, Adam 1e-3, gradient penalty 10) with the victim (trained on the released "
        f"set) as extractor. Random noise sigma in {sigmas}; Friendly noise eps in {eps_text} "
        f"(mu 1, 30 SGD steps, lr 100) under the victim; the noises are drawn once per row and trial and "
        f"spliced into each detector's untrusted rows. k-NN(K): k = {len(train_set) // 10} (the rows per "
        f"class, seed 003's rule and the detector's default), features of a `cnn` trained on "
        f"{len(extractor_set)} disjoint clean MNIST rows (independent of the victim's data). "
        "† = the simulated detector, an evaluation-only oracle that draws the reference set from the true "
        "poison mask. Accuracy on the test rows without the target (seed 003); net = the purified model's "
        "success minus that of the victim's twin (same seed and schedule, trained without poisons), per "
        "trial.",
        "",
        f"**Paper.** {PAPER}",
        "",
        f"**No purification** (victim on the released set): acc {mean_sd(acc0)}%, "
        f"{asr_name} {mean_sd(asr0)}%; **twin without poisons**: acc {mean_sd(acc_twin)}%, {asr_name} "
        f"{mean_sd(twin_asr)}%.",
        "",
        "### Purified: each baseline at the sigma / eps whose accuracy is closest to Mendata's",
        "",
        *lines,
        "",
        "### The whole grid: acc / ASR (%) per method, mean over trials",
        "",
        *grid,
        "",
        "### Mendata's runs",
        "",
        "| detector | rounds | stopped by | RMS pixel change | s |",
        "|---|---|---|---|---|",
        *minfo,
        "",
    ]
    if critic_trace is not None:
        name, trial, values, steps = critic_trace
        md += [
            f"Critic estimate W_hat per round ({name}, trial {trial}): "
            + ", ".join(f"{v:.3f}" for v in values)
            + f"; critic steps per round: {', '.join(map(str, steps))}.",
            "",
        ]
    text = "\n".join(md)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    log(f"wrote {args.out} in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
