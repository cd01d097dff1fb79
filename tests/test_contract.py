"""One contract over the whole registry: every attack, detector, defense, input detector and purifier

(a) builds from its defaults, (b) round-trips its config (``create(kind, m.spec()) == m``, JSON-serialisable
spec), and (c) runs on real data (a digits subset) with cheap overrides, never changes what it is given (data,
models), and returns its documented record.

The tests are parametrized over ``poisonlab.registry``: a newly registered method is picked up automatically
and fails until it has an entry in ``SETUP`` (its cheap overrides and why), so no method goes without a
contract. These are interface checks; the methods' effects are measured in their own test files.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from poisonlab import registry
from poisonlab.attacks import BadNets
from poisonlab.data import stratified_subset
from poisonlab.defenses.base import Repair
from poisonlab.defenses.training import Defended
from poisonlab.detection import SimulatedDetector
from poisonlab.errors import ConfigError
from poisonlab.models import build_model
from poisonlab.poison import PoisonedDataset
from poisonlab.purification.base import Purification
from poisonlab.registry import create
from poisonlab.training import TrainConfig, TrainHook, TrainRun, train

KINDS = ("attack", "detector", "defense", "training_defense", "input_detector", "purifier")

# kind -> name -> (overrides for the contract run, why). Overrides only cut cost (steps, epochs, restarts);
# every method is also built from its bare defaults in test_builds_from_defaults_and_round_trips.
SETUP: dict[str, dict[str, tuple[dict, str]]] = {
    "attack": {
        "label_flip_targeted": ({}, "defaults are cheap (10% of the source class)"),
        "label_flip_random": ({}, "defaults are cheap (3% of the rows)"),
        "badnets": ({}, "defaults are cheap (10% of the rows)"),
        "blend": ({}, "defaults are cheap (10% of the rows)"),
        "pruning_aware": ({}, "crafting is BadNets' (cheap); its training of the victim is tested elsewhere"),
        "feature_collision": ({"steps": 5}, "500 forward-backward steps by default; 5 exercise the loop"),
        "first_order": ({"steps": 2}, "100 crafting steps by default; 2 exercise the update"),
        "metapoison": ({"steps": 2}, "60 unrolled crafting steps by default; 2 exercise them"),
        "min_max": (
            {"fraction": 0.005, "inner_steps": 2},
            "3% of the rows x 20 ascent steps by default; 7 points of 2 steps exercise it",
        ),
        "i_min_max": (
            {"fraction": 0.005, "inner_steps": 2, "decoy_steps": 2},
            "min-max plus a 100-step GradPC decoy by default; 2 steps exercise it",
        ),
        "back_gradient": (
            {"steps": 2, "unroll_steps": 2, "val_size": 100},
            "60 outer x 100 unrolled steps by default; 2 x 2 exercise the back-gradient",
        ),
        "influence_function": (
            {"steps": 2, "cg_iters": 5},
            "100 steps and CG iterations by default; 2 and 5 exercise them",
        ),
        "gradient_matching": (
            {"steps": 2, "restarts": 1},
            "8 restarts x 250 steps by default; one restart of 2 steps exercises the loop",
        ),
        "gradient_canceling": (
            {"gradpc_steps": 3, "steps": 5},
            "100 GradPC + 1000 canceling steps by default; a few of each exercise both",
        ),
        "radioactive_data": (
            {"steps": 12, "align_rows": 200},
            "300 marking steps by default; 12 exercise the schedule's two decays and the 1/255 rounding",
        ),
        "tgda": (
            {"steps": 2, "cg_iters": 2, "val_size": 100, "batch_size": 100},
            "100 leader steps of 10 CG iterations by default; val_size 1000 exceeds the 300-row subset",
        ),
        "sleeper_agent": (
            {"steps": 8, "retrain_every": 4, "surrogate_epochs": 1, "lr": 1.0},
            "250 steps with a 20-epoch surrogate retrained every 50 by default; 8 steps with one retrain "
            "of a 1-epoch surrogate exercise both paths; lr 1 (in units of eps, before the decay at step "
            "3) moves the perturbation to the edge of the ball (3 eps were it not clamped), so the budget "
            "check bites",
        ),
        "unlearnable": (
            {"pgd_steps": 2, "max_rounds": 2},
            "up to 50 rounds of 20 noise steps over every row by default; 2 of 2 exercise both halves",
        ),
    },
    "detector": {
        "spectral": ({}, "defaults are cheap"),
        "activation_clustering": ({}, "defaults are cheap"),
        "knn": ({}, "defaults are cheap"),
        "knn_k": ({}, "defaults are cheap"),
        "simulated": ({}, "defaults are cheap (reads the truth mask)"),
        "tracin_self": ({}, "defaults are cheap on 3 checkpoints of a small cnn"),
        "tracin_test": ({}, "defaults are cheap on 3 checkpoints of a small cnn"),
        "tracin_ideal": ({}, "records a cheap retraining of the small cnn (its scores need the training)"),
    },
    "defense": {
        "fine_pruning": (
            {"step": 0.25, "finetune_epochs": 1},
            "5% steps with 2 fine-tuning epochs each by default; 25% steps of one epoch exercise the loop",
        ),
    },
    "training_defense": {
        "knn_removal": ({}, "defaults are cheap"),
        "epic": (
            {"drop_after": 1},
            "rounds from epoch 5 by default; after 1 the 2-epoch contract run has one",
        ),
        "frienb": ({"steps": 2}, "30 friendly-noise steps by default; 2 exercise the update"),
        "cbd": ({"backdoor_epochs": 1}, "a 2-epoch backdoored model by default; 1 exercises the reweighting"),
        "asd": ({}, "defaults are cheap on the contract's 2-epoch fit (stages 1 and 3 run)"),
        "adversarial_training": ({"steps": 2}, "10 PGD steps per batch by default; 2 exercise the search"),
    },
    "input_detector": {
        "strip": ({"num_overlays": 16}, "100 overlays per input by default; 16 exercise the entropy"),
    },
    "purifier": {
        "ref": ({}, "defaults are cheap"),
        "remove": ({}, "defaults are cheap"),
        "random_noise": ({}, "defaults are cheap"),
        "friendly_noise": ({"steps": 2}, "30 optimisation steps by default; 2 exercise the update"),
        "mendata": (
            {"max_rounds": 2, "max_critic_steps": 20},
            "up to 30 rounds of up to 2000 critic steps by default; 2 rounds of 20 exercise steps I and II",
        ),
    },
}

registry._load_all()
ALL = [(kind, name) for kind in sorted(registry.REGISTRY) for name in sorted(registry.REGISTRY[kind])]
IDS = [f"{kind}-{name}" for kind, name in ALL]
SCHEDULE = TrainConfig(epochs=3, lr=0.05, batch_size=32)


def _setup(kind: str, name: str) -> dict:
    entry = SETUP.get(kind, {}).get(name)
    if entry is None:
        pytest.fail(
            f"{kind} {name!r} is registered but has no entry in tests/test_contract.py SETUP: add the cheap "
            "overrides its contract run needs and why (every method must have a contract)"
        )
    return entry[0]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], v) for k, v in before.items())


@pytest.fixture(scope="module")
def data(digits_split):
    """300 training and 100 test rows of digits, stratified."""
    train_set, test_set = digits_split
    return stratified_subset(train_set, 300, seed=0), stratified_subset(test_set, 100, seed=0)


@pytest.fixture(scope="module")
def victim(data):
    """A cnn trained on the clean rows: the white-box victim every attack is given."""
    train_set, _ = data
    return train(build_model("cnn", train_set.input_shape, 10, seed=0), train_set, SCHEDULE, seed=0).model


@pytest.fixture(scope="module")
def backdoored(data):
    """BadNets at its default 10% and a cnn trained on the released rows with 3 checkpoints: what detectors,
    purifiers, STRIP and fine-pruning read."""
    train_set, test_set = data
    attack = BadNets()
    own = train_set.subset(torch.arange(len(train_set)))  # a copy: only the method under test reads `data`
    poisoned = attack.craft(own, generator=torch.Generator().manual_seed(0))
    run = train(build_model("cnn", train_set.input_shape, 10, seed=0), poisoned.data, SCHEDULE, seed=0)
    triggered = attack.triggered(test_set, poisoned.goals[0]).x
    return attack, poisoned, run, triggered


def test_every_kind_and_method_has_a_contract():
    assert set(registry.REGISTRY) == set(KINDS), "a new kind of method needs a contract in this file"
    for kind in KINDS:
        registered, covered = set(registry.methods(kind)), set(SETUP[kind])
        assert registered - covered == set(), f"{kind}: registered without a SETUP entry"
        assert covered - registered == set(), f"{kind}: SETUP entries for unregistered methods"


@pytest.mark.parametrize("kind, name", ALL, ids=IDS)
def test_builds_from_defaults_and_round_trips(kind, name):
    overrides = _setup(kind, name)
    for spec in ({"name": name}, {"name": name, **overrides}):
        method = create(kind, spec)
        assert type(method) is registry.REGISTRY[kind][name] and method.kind == kind and method.name == name
        resolved = method.spec()
        assert json.loads(json.dumps(resolved)) == resolved  # JSON as written in results.json
        assert create(kind, resolved) == method
        assert create(kind, json.loads(json.dumps(resolved))) == method
        assert method.oracle() is None or (isinstance(method.oracle(), str) and method.oracle())


def test_budgeted_attacks_default_to_their_documented_fraction(digits_split):
    """Neither fraction nor count: random flips 3% of the rows (seed 001), targeted flips 10% of the source
    class, BadNets and blend 10% of the rows (seed 004); both: rejected."""
    train_set, _ = digits_split  # 1348 rows, 137 of class 3
    gen = torch.Generator
    expected = {
        "label_flip_random": round(0.03 * 1348),  # 40
        "label_flip_targeted": round(0.1 * 137),  # 14 of the 3s
        "badnets": round(0.1 * 1348),  # 135
        "blend": round(0.1 * 1348),
    }
    for name, n in expected.items():
        poisoned = create("attack", name).craft(train_set, generator=gen().manual_seed(0))
        assert len(poisoned.poison_idx) == n, name
        with pytest.raises(ConfigError, match="at most one of fraction and count"):
            create("attack", {"name": name, "fraction": 0.1, "count": 3})
        by_count = create("attack", {"name": name, "count": 3}).craft(train_set, generator=gen())
        assert len(by_count.poison_idx) == 3


@pytest.mark.parametrize("kind, name", ALL, ids=IDS)
def test_runs_on_digits_and_keeps_its_inputs(kind, name, data, victim, backdoored):
    method = create(kind, {"name": name, **_setup(kind, name)})
    check = {
        "attack": _check_attack,
        "detector": _check_detector,
        "defense": _check_defense,
        "training_defense": _check_training_defense,
        "input_detector": _check_input_detector,
        "purifier": _check_purifier,
    }.get(kind)
    assert check is not None, f"no contract for methods of kind {kind!r}"
    check(method, data, victim, backdoored)  # each check asserts the kind's contract


def _check_attack(attack, data, victim, backdoored):
    train_set, test_set = data
    inputs = [t.clone() for t in (train_set.x, train_set.y, test_set.x, test_set.y)]
    victim_state = _state(victim)
    gen = torch.Generator().manual_seed(0)
    poisoned = attack.craft(train_set, generator=gen, victim=victim, test=test_set)
    assert all(torch.equal(a, b) for a, b in zip(inputs, (train_set.x, train_set.y, test_set.x, test_set.y)))
    assert _same_state(victim, victim_state)

    assert isinstance(poisoned, PoisonedDataset)
    released, n = poisoned.data, len(train_set)
    assert released.x.shape[1:] == train_set.x.shape[1:] and released.classes == train_set.classes
    assert released.x.dtype == torch.float32 and 0 <= released.x.min() and released.x.max() <= 1
    assert released.y.dtype == torch.int64 and 0 <= released.y.min() and released.y.max() < 10
    if poisoned.num_clean is None:
        assert len(released) == n
    else:  # appended rows: the clean rows first, every appended row a poison
        assert poisoned.num_clean == n and len(released) > n
    idx = poisoned.poison_idx
    assert idx.dtype == torch.int64 and idx.ndim == 1 and len(idx) > 0
    assert len(idx.unique()) == len(idx) and 0 <= idx.min() and idx.max() < len(released)
    assert len(poisoned.goals) == 1 and torch.equal(poisoned.poison_goal, torch.zeros_like(idx))

    # the originals: the input's rows at poison_idx, or for an appended row a row of the input
    inside = idx < n
    assert torch.equal(poisoned.original.x[inside], train_set.x[idx[inside]])
    assert torch.equal(poisoned.original.y[inside], train_set.y[idx[inside]])
    if (~inside).any():
        flat = train_set.x.flatten(1)
        for x, y in zip(poisoned.original.x[~inside], poisoned.original.y[~inside]):
            assert ((flat == x.flatten()).all(1) & (train_set.y == y)).any()
    # rows that are not poisons are released as they were
    clean_rows = torch.ones(n, dtype=torch.bool)
    clean_rows[idx[inside]] = False
    assert torch.equal(released.x[:n][clean_rows], train_set.x[clean_rows])
    assert torch.equal(released.y[:n][clean_rows], train_set.y[clean_rows])

    eps = getattr(attack, "eps", None)
    if isinstance(eps, float):  # an L_inf budget measured from the clean originals
        linf, _ = poisoned.perturbation(0)
        assert linf.max() <= eps + 1e-6, (float(linf.max()), eps)

    metrics = attack.evaluate(victim, test_set, poisoned.goals[0])
    assert isinstance(metrics, dict) and all(isinstance(v, float | int) for v in metrics.values())
    # the declared success metric is one of evaluate's keys (None: an indiscriminate attack)
    assert attack.success_key is None or attack.success_key in metrics, (attack.success_key, sorted(metrics))
    assert _same_state(victim, victim_state)


def _check_detector(detector, data, victim, backdoored):
    _, test_set = data
    _, poisoned, run, _ = backdoored
    released = poisoned.data
    inputs = [t.clone() for t in (released.x, released.y)]
    states = [_state(run.model)] + [{k: v.clone() for k, v in c.state.items()} for c in run.checkpoints]
    fresh = TrainRun(run.model, run.checkpoints, run.history)  # no cache shared with other detectors
    gen = torch.Generator().manual_seed(0)
    if detector.records_training:  # it reads what the victim's training recorded: without it, one line
        with pytest.raises(ConfigError, match="training record"):
            detector.scores(released, fresh, test=test_set, generator=gen)
        model = build_model("cnn", released.input_shape, 10, seed=0)
        fresh = train(model, released, SCHEDULE, seed=0, hook=detector.recorder(len(released)))
        run = fresh
        states = [_state(run.model)] + [{k: v.clone() for k, v in c.state.items()} for c in run.checkpoints]
    if detector.oracle():  # an evaluation-only oracle: it refuses to score without the truth mask
        with pytest.raises(ConfigError, match="oracle"):
            detector.scores(released, fresh, test=test_set, generator=gen)
        scores = detector.scores(released, fresh, test=test_set, generator=gen, truth=poisoned.is_poisoned)
    else:
        scores = detector.scores(released, fresh, test=test_set, generator=gen)
    assert isinstance(scores, np.ndarray) and np.issubdtype(scores.dtype, np.floating)
    assert scores.shape == (len(released),) and np.isfinite(scores).all()
    assert torch.equal(inputs[0], released.x) and torch.equal(inputs[1], released.y)
    assert _same_state(run.model, states[0])
    for c, before in zip(run.checkpoints, states[1:]):
        assert all(torch.equal(c.state[k], v) for k, v in before.items())


def _check_defense(defense, data, victim, backdoored):
    _, test_set = data
    attack, _, run, triggered = backdoored
    model = run.model
    inputs = [t.clone() for t in (test_set.x, test_set.y, triggered)]
    state, modules = _state(model), [n for n, _ in model.named_modules()]
    repair = defense.repair(model, test_set, triggered=triggered, target=attack.target, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(inputs, (test_set.x, test_set.y, triggered)))
    assert _same_state(model, state) and [n for n, _ in model.named_modules()] == modules

    assert isinstance(repair, Repair) and isinstance(repair.steps, list) and isinstance(repair.info, dict)
    repaired = repair.model
    assert repaired is not model and type(repaired) is type(model)
    assert [p.shape for p in repaired.parameters()] == [p.shape for p in model.parameters()]
    with torch.no_grad():
        assert repaired.eval()(test_set.x[:4]).shape == model.eval()(test_set.x[:4]).shape


def _check_training_defense(defense, data, victim, backdoored):
    _, test_set = data
    _, poisoned, run, _ = backdoored
    released = poisoned.data
    inputs = [t.clone() for t in (released.x, released.y)]
    state = _state(run.model)
    seen = []

    def fit(data, hook=None, desc="", epochs=None):  # trains as a victim is trained; records the requests
        seen.append((len(data), hook))
        model = build_model("cnn", data.input_shape, data.num_classes, seed=0)
        return train(model, data, TrainConfig(epochs=epochs or 2, batch_size=64), seed=0, hook=hook)

    gen = torch.Generator().manual_seed(0)
    if defense.oracle():  # an evaluation-only oracle: it refuses to train without the truth mask
        with pytest.raises(ConfigError, match="oracle"):
            defense.train(released, fit, victim=run, generator=gen)
    truth = poisoned.is_poisoned if defense.oracle() else None
    out = defense.train(released, fit, victim=run, generator=gen, truth=truth)
    assert torch.equal(inputs[0], released.x) and torch.equal(inputs[1], released.y)
    assert _same_state(run.model, state)
    assert isinstance(out, Defended) and isinstance(out.run, TrainRun) and isinstance(out.info, dict)
    assert out.removed.dtype == torch.bool and out.removed.shape == (len(released),)
    assert seen and all(hook is None or isinstance(hook, TrainHook) for _, hook in seen)
    with torch.no_grad():
        assert out.run.model.eval()(test_set.x[:4]).shape == (4, 10)


def _check_input_detector(detector, data, victim, backdoored):
    _, test_set = data
    _, _, run, triggered = backdoored
    model = run.model.train()
    inputs = [t.clone() for t in (test_set.x, test_set.y, triggered)]
    state = _state(model)
    metrics, entropies = detector.evaluate(model, test_set, triggered, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(inputs, (test_set.x, test_set.y, triggered)))
    assert _same_state(model, state) and model.training  # its mode restored
    model.eval()
    # the record the runner reads: the boundary, FRR on the fitted and unseen clean rows, FAR, AUROC
    assert {"boundary", "frr_fit", "frr", "far", "auroc"} <= set(metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert len(entropies["clean"]) == len(test_set) and len(entropies["triggered"]) == len(triggered)
    assert all(np.isfinite(e).all() for e in entropies.values())


def _check_purifier(purifier, data, victim, backdoored):
    _, poisoned, run, _ = backdoored
    released = poisoned.data
    reference = SimulatedDetector(precision=1.0, recall=0.5).select(
        poisoned.is_poisoned, torch.Generator().manual_seed(0)
    )
    inputs = [t.clone() for t in (released.x, released.y, reference)]
    state = _state(run.model)
    out = purifier.purify(
        released, reference, generator=torch.Generator().manual_seed(0), extractor=run.model, model=run.model
    )
    assert all(torch.equal(a, b) for a, b in zip(inputs, (released.x, released.y, reference)))
    assert _same_state(run.model, state)

    assert isinstance(out, Purification)
    kept = out.kept
    assert kept.dtype == torch.int64 and kept.ndim == 1 and len(kept) == len(out.data)
    assert len(kept.unique()) == len(kept) and 0 <= kept.min() and kept.max() < len(released)
    assert out.data.x.shape[1:] == released.x.shape[1:] and out.data.classes == released.classes
    assert 0 <= out.data.x.min() and out.data.x.max() <= 1
    ref_rows = reference.nonzero().flatten()
    assert torch.isin(ref_rows, kept).all()  # the reference set is never dropped ...
    at = reference[kept]
    assert torch.equal(out.data.x[at], released.x[kept[at]])  # ... nor changed
    assert torch.equal(out.data.y[at], released.y[kept[at]])
