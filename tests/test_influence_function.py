"""The influence-function attack (Koh & Liang 2017; seed 002's eqs. 1-2): the inverse Hessian-vector product
it solves, its reduction to first-order poisoning's leading term when H is the identity, and its effect on
a victim that retrains its head on the poisons (transfer, Koh & Liang's convex setting)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian

from poisonlab.attacks import FirstOrder, InfluenceFunction
from poisonlab.attacks.influence_function import inverse_hvp
from poisonlab.attacks.targeted import adversarial_loss
from poisonlab.models import build_model
from poisonlab.training import TrainConfig, accuracy, train, train_head

FAST = TrainConfig(epochs=10, lr=0.05, batch_size=32)
HEAD = TrainConfig(epochs=20, weight_decay=0)  # the transfer victim: its head retrained, as the README says


@pytest.fixture(scope="module")
def extractor(digits_split):
    """A clean digits cnn whose head alone is trainable (the transfer setting's pretrained model)."""
    train_set, _ = digits_split
    model = train(build_model("cnn", train_set.input_shape, 10, seed=0), train_set, FAST, seed=0).model
    model = copy.deepcopy(model).eval()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))
    return model


def test_inverse_hvp_solves_the_damped_hessian_system(digits_split, extractor):
    """Against the explicit Hessian of the head (float64): (H + wd + damping) s = g to 1e-6, and the
    residual the attack records says so."""
    train_set, test_set = digits_split
    model = copy.deepcopy(extractor).double()
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = train_set.x[:300].double(), train_set.y[:300]
    g = torch.autograd.grad(adversarial_loss(model, test_set.x[:1].double(), 3), params)
    s, residual = inverse_hvp(
        model, params, x, y, g, weight_decay=1e-3, damping=0.01, iters=300, batch_size=128
    )

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def mean_loss(flat):
        parts = dict(zip(names, (t.view(sh) for t, sh in zip(flat.split(sizes), shapes))))
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    flat = torch.cat([p.detach().flatten() for p in params])
    h = hessian(mean_loss)(flat) + (1e-3 + 0.01) * torch.eye(len(flat), dtype=flat.dtype)
    b = torch.cat([t.flatten() for t in g])
    expected = torch.linalg.solve(h, b)
    got = torch.cat([t.flatten() for t in s])
    assert float((got - expected).norm() / expected.norm()) < 1e-6
    assert residual < 1e-6
    assert float((got - b / 0.011).norm() / got.norm()) > 0.1  # the Hessian matters: s is not g / lambda


def test_with_the_hessian_as_a_scaled_identity_the_step_is_first_orders_leading_term(digits_split):
    """With a damping that swamps H, s = g_t / lambda and the attack's gradient in the poisons is parallel to
    first-order poisoning's at a small alpha (Zheng & Li's "approximation of a second-order approach")."""
    train_set, _ = digits_split
    model = build_model("mlp", train_set.input_shape, 10, seed=0).double().eval()
    x_t, y_adv = train_set.x[:1].double(), 3
    x_p, y_p = train_set.x[10:18].double().requires_grad_(True), train_set.y[10:18]
    gen = torch.Generator().manual_seed(0)
    influence = InfluenceFunction(damping=1e4, hessian_rows=50).objective(
        [model], x_t, y_adv, None, y_p, train_set, gen
    )
    first = FirstOrder(alpha=1e-5).objective([model], x_t, y_adv, None, y_p, None, None)
    a = torch.autograd.grad(influence(x_p), x_p)[0]
    b = torch.autograd.grad(first(x_p), x_p)[0]
    cosine = float((a * b).sum() / (a.norm() * b.norm()))
    assert cosine > 0.9999  # 0.99999999 measured; 0.90 at damping 1, where H matters


def test_influence_poisons_raise_the_targets_adversarial_probability_on_a_retrained_head(
    digits_split, extractor
):
    """Transfer on digits as first-order's test (tests/test_clean_label.py): 40 poisons (3%) at eps
    32/255 toward the runner-up class of a correctly classified target, the victim's head retrained 20
    epochs on the released set, its twin on the clean rows (same seed). log10(p_adv victim / p_adv twin)
    over targets 0-4: 1.01 / 1.71 / 0.91 / 1.38 / 1.43 (mean 1.29; 1 target flips, none on the twin);
    first-order in the same setting 1.15, this attack with the Hessian replaced by the identity 1.11.
    Objective reversed: -0.32 (every target below its twin); constant: +0.01."""
    train_set, test_set = digits_split
    ratios = []
    for seed in range(5):
        attack = InfluenceFunction(
            count=40, eps=32 / 255, steps=60, train=FAST, adversarial_choice="runner_up"
        )
        poisoned = attack.craft(
            train_set, generator=torch.Generator().manual_seed(seed), victim=extractor, test=test_set
        )
        goal = poisoned.goals[0]
        assert (poisoned.data.y == train_set.y).all()
        assert (poisoned.data.x[poisoned.poison_idx] - poisoned.original.x).abs().max() <= 32 / 255 + 1e-6
        assert goal.params["cg_residual"] < 1e-3
        victim = train_head(extractor, poisoned.data, HEAD, seed=seed).model
        twin = train_head(extractor, train_set, HEAD, seed=seed).model
        on_victim, on_twin = attack.evaluate(victim, test_set, goal), attack.evaluate(twin, test_set, goal)
        ratios.append(math.log10(on_victim["adversarial_probability"] / on_twin["adversarial_probability"]))
        assert accuracy(victim, test_set) > accuracy(twin, test_set) - 0.03
    assert min(ratios) > 0 and sum(ratios) / len(ratios) > 0.8, ratios
