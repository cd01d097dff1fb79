import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from poisonlab.attacks import TargetedLabelFlip
from poisonlab.detection import TracInSelf, influence, self_influence, summed_influence
from poisonlab.detection.influence import TracInCP, parameter_names
from poisonlab.detection.tracin import TracInTest
from poisonlab.errors import ConfigError
from poisonlab.models import build_model
from poisonlab.training import TrainConfig, train


def brute_force(model, checkpoints, train_set, test_set, names):
    """One autograd call per sample and checkpoint, then every pair's dot product."""
    out = torch.zeros(len(train_set), len(test_set), dtype=torch.float64)
    params = dict(model.named_parameters())
    for ck in checkpoints:
        model.load_state_dict(ck.state)
        model.eval()

        def flat_grad(x, y):
            loss = F.cross_entropy(model(x[None]), y[None])
            return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [params[n] for n in names])])

        g_train = [flat_grad(x, y).double() for x, y in zip(train_set.x, train_set.y)]
        g_test = [flat_grad(x, y).double() for x, y in zip(test_set.x, test_set.y)]
        for i, gi in enumerate(g_train):
            for j, gj in enumerate(g_test):
                out[i, j] += ck.lr * (gi @ gj)
    return out


@pytest.fixture(scope="module")
def tiny_run(digits_split):
    train_set, test_set = digits_split
    small = train_set.subset(torch.arange(200))
    model = build_model("cnn", small.input_shape, 10, seed=0, width=4, hidden=16)
    config = TrainConfig(lr=0.1, epochs=4, batch_size=32, milestones=(2,), checkpoint_every=2)
    return (
        train(model, small, config, seed=0),
        small.subset(torch.arange(7)),
        test_set.subset(torch.arange(5)),
    )


@pytest.mark.parametrize("layers", [None, ["head"], ["body.0", "body.7"]])
def test_tracin_equals_brute_force(tiny_run, layers):
    run, train_part, test_part = tiny_run
    names = parameter_names(run.model, layers)
    expected = brute_force(run.model, run.checkpoints, train_part, test_part, names)
    got = influence(run.model, run.checkpoints, train_part, test_part, layers=layers, batch_size=3)
    assert got.dtype == torch.float32
    scale = expected.abs().max()
    assert scale > 0
    assert (got.double() - expected).abs().max() / scale < 1e-5
    summed = summed_influence(run.model, run.checkpoints, train_part, test_part, layers=layers, batch_size=4)
    assert torch.allclose(summed.double(), expected.sum(1), rtol=1e-4, atol=1e-5 * scale)
    self_expected = brute_force(run.model, run.checkpoints, train_part, train_part, names).diagonal()
    got_self = self_influence(run.model, run.checkpoints, train_part, layers=layers, batch_size=2)
    assert torch.allclose(got_self.double(), self_expected, rtol=1e-5)


def test_unknown_layer_and_missing_checkpoints_are_clear_errors(tiny_run):
    run, train_part, test_part = tiny_run
    with pytest.raises(ConfigError, match="unknown layer"):
        self_influence(run.model, run.checkpoints, train_part, layers=["fc9"])
    with pytest.raises(ConfigError, match="at least one checkpoint"):
        self_influence(run.model, [], train_part)
    with pytest.raises(ConfigError, match="memory_budget of 0.0 MiB is too small: one tile"):
        influence(run.model, run.checkpoints, train_part, test_part, memory_budget="10KB")
    with pytest.raises(ConfigError, match="not a size"):
        TracInCP(run.model, run.checkpoints, memory_budget="lots")


class _Mixed(torch.nn.Module):
    """Conv with and without bias, batch norm, a layer norm (vmap fallback) and a shared-free head."""

    def __init__(self):
        super().__init__()
        self.conv_a = torch.nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(3)
        self.conv_b = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.norm = torch.nn.LayerNorm(36)
        self.head = torch.nn.Linear(36, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv_a(x)))
        h = torch.relu(self.conv_b(h)).flatten(1)
        return self.head(self.norm(h))


@pytest.fixture(scope="module")
def mixed_run(digits_split):
    from poisonlab.training import Checkpoint, TrainRun

    train_set, test_set = digits_split
    torch.manual_seed(0)
    model = _Mixed()
    checkpoints = []
    for i, lr in enumerate([0.1, 0.03]):
        model.train()
        model(train_set.x[:64] + i)  # move the batch-norm running statistics
        for p in model.parameters():
            p.data += 0.05 * torch.randn_like(p)
        checkpoints.append(Checkpoint(i, lr, {k: v.clone() for k, v in model.state_dict().items()}))
    model.eval()
    return TrainRun(model, checkpoints), train_set.subset(torch.arange(6)), test_set.subset(torch.arange(4))


@pytest.mark.parametrize("layers", [None, ["conv_a", "bn"], ["conv_b"], ["norm", "head"]])
def test_conv_batchnorm_and_fallback_layers_equal_brute_force(mixed_run, layers):
    run, train_part, test_part = mixed_run
    names = parameter_names(run.model, layers)
    expected = brute_force(run.model, run.checkpoints, train_part, test_part, names)
    engine = TracInCP(run.model, run.checkpoints, layers=layers)
    got = engine.influence(train_part, test_part).double()
    assert (got - expected).abs().max() / expected.abs().max() < 1e-5
    self_expected = brute_force(run.model, run.checkpoints, train_part, train_part, names).diagonal()
    assert torch.allclose(engine.self_influence(train_part).double(), self_expected, rtol=1e-5)


def test_result_does_not_depend_on_tiling_or_budget(tiny_run, digits_split):
    run, _, test_part = tiny_run
    train_set, _ = digits_split
    rows = train_set.subset(torch.arange(300))
    results = []
    for budget, batch in [("4GB", None), ("3MB", None), ("4GB", 7)]:
        engine = TracInCP(run.model, run.checkpoints, memory_budget=budget, batch_size=batch)
        results.append((engine.influence(rows, test_part), engine.self_influence(rows)))
    for matrix, selfs in results[1:]:
        assert torch.allclose(matrix, results[0][0], rtol=1e-5, atol=1e-6)
        assert torch.allclose(selfs, results[0][1], rtol=1e-5, atol=1e-6)


def test_tiles_stay_near_the_fast_size_unless_the_rows_are_fixed(tiny_run, digits_split, monkeypatch):
    """A large budget no longer means memory-sized tiles (up to 2x slower per row on CPU): the rows per tile
    follow FAST_TILE_BYTES, and an explicit batch_size is kept as given."""
    module = importlib.import_module("poisonlab.detection.influence")  # the package exports a function too
    run, _, _ = tiny_run
    train_set, _ = digits_split
    engine = TracInCP(run.model, run.checkpoints, memory_budget="8GB")
    engine._setup(train_set, 1)
    per = engine._bytes_per_sample(train_set, 0)
    assert engine._tile_size(train_set, 0, 0) == min(len(train_set), module.FAST_TILE_BYTES // per)
    monkeypatch.setattr(module, "FAST_TILE_BYTES", 40 * per)
    assert engine._tile_size(train_set, 0, 0) == 40
    fixed = TracInCP(run.model, run.checkpoints, memory_budget="8GB", batch_size=100)
    fixed._setup(train_set, 1)
    assert fixed._tile_size(train_set, 0, 0) == 100


def test_projection_and_last_layer_modes(tiny_run, digits_split):
    run, _, _ = tiny_run
    train_set, test_set = digits_split
    rows, tests = train_set.subset(torch.arange(200)), test_set.subset(torch.arange(30))
    exact = TracInCP(run.model, run.checkpoints).influence(rows, tests)
    coarse = TracInCP(run.model, run.checkpoints, projection_dim=16, seed=0)
    fine = TracInCP(run.model, run.checkpoints, projection_dim=1024, seed=0)
    approx_fine = fine.influence(rows, tests)
    coarse.influence(rows, tests)
    assert 0 < fine.last_projection_error < coarse.last_projection_error
    measured = float((approx_fine[:200, :30] - exact[:200, :30]).norm() / exact[:200, :30].norm())
    assert fine.last_projection_error == pytest.approx(measured, rel=1e-4)
    assert torch.equal(
        approx_fine, TracInCP(run.model, run.checkpoints, projection_dim=1024, seed=0).influence(rows, tests)
    )
    head = TracInCP(run.model, run.checkpoints, last_layer_only=True).influence(rows, tests)
    assert torch.allclose(head, TracInCP(run.model, run.checkpoints, layers=["head"]).influence(rows, tests))


def test_top_k_proponents_and_opponents(tiny_run):
    run, train_part, test_part = tiny_run
    engine = TracInCP(run.model, run.checkpoints)
    matrix = engine.influence(train_part, test_part)
    top = engine.top_k(train_part, test_part, k=3)
    assert top["proponents"].shape == (len(test_part), 3)
    for j in range(len(test_part)):
        assert torch.equal(top["proponents"][j], matrix[:, j].argsort(descending=True)[:3])
        assert torch.equal(top["opponents"][j], matrix[:, j].argsort()[:3])
        assert (top["opponent_scores"][j] <= top["proponent_scores"][j].min()).all()


@pytest.fixture(scope="module")
def flipped(digits_split):
    """Digits (1347 training rows), 20% of the training 3s relabelled 9 (27 flips), a CNN trained on the
    released set with 5 checkpoints (epochs 4, 8, ..., 20)."""
    train_set, test_set = digits_split
    poisoned = TargetedLabelFlip(source=3, target=9, fraction=0.2).craft(
        train_set, generator=torch.Generator().manual_seed(0)
    )
    model = build_model("cnn", train_set.input_shape, 10, seed=0)
    config = TrainConfig(lr=0.05, epochs=20, batch_size=32, milestones=(15,), checkpoint_every=4)
    return poisoned, train(model, poisoned.data, config, seed=0), test_set


def test_self_influence_ranks_targeted_flips_on_digits(flipped):
    """tracin_self against a random ranking (AUROC 0.5; a random 10% of the rows holds 10% of the flips).

    Measured: AUROC 0.965, all 27 flips among the 10% highest scores (precision at the budget of 27 is only
    0.15: clean rows misfit at the first checkpoint come first). Negated scores give AUROC 0.035, a constant
    0.5, so the bounds fail for a reversed or no-op score.
    """
    poisoned, run, _ = flipped
    is_poison = poisoned.is_poisoned.numpy()
    scores = TracInSelf().scores(poisoned.data, run)
    assert np.array_equal(scores, self_influence(run.model, run.checkpoints, poisoned.data).numpy())
    auroc = roc_auc_score(is_poison, scores)
    assert auroc >= 0.9, auroc
    top = np.argsort(-scores, kind="stable")[: len(scores) // 10]
    assert is_poison[top].sum() >= 0.8 * is_poison.sum()  # a random 10% of the rows holds 10% of the flips
    # the median poison scores far above the median clean row
    assert np.median(scores[is_poison]) > 100 * np.median(scores[~is_poison])


def test_test_influence_sign_option_on_digits(flipped):
    """Seed 000's Algorithm 1 with 100 points drawn from the *test* split (three draws).

    A flipped 3 (labelled 9) is an opponent of the test 3s, so ``sign: negative`` ranks the flips high
    and ``positive`` (Algorithm 1 as written) ranks them low, far from a random ranking's AUROC 0.5;
    ``absolute`` is the magnitude. Measured AUROC of ``negative`` for draws 0, 1, 2: 0.999, 0.895, 0.981
    (``positive`` = 1 - that), of ``absolute`` 0.98, 0.93, 0.92. Ignoring the sign option fails either the
    negative or the positive bound.
    """
    poisoned, run, test_set = flipped
    is_poison = poisoned.is_poisoned.numpy()
    for draw in range(3):
        negative, positive, absolute = (
            TracInTest(num_test=100, sign=sign).scores(
                poisoned.data, run, test=test_set, generator=torch.Generator().manual_seed(draw)
            )
            for sign in ("negative", "positive", "absolute")
        )
        if draw == 0:  # the detector sums TracInCP over 100 test rows drawn from the trial's seed
            pick = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))[:100]
            expected = summed_influence(run.model, run.checkpoints, poisoned.data, test_set.subset(pick))
            np.testing.assert_allclose(positive, expected.numpy(), rtol=1e-5, atol=1e-6)
        assert roc_auc_score(is_poison, negative) > 0.8, draw
        assert roc_auc_score(is_poison, positive) < 0.2, draw
        np.testing.assert_array_equal(negative, -positive)
        np.testing.assert_array_equal(absolute, np.abs(positive))
        assert roc_auc_score(is_poison, absolute) > 0.7, draw


def test_scores_equal_captums(tiny_run):
    captum = pytest.importorskip("captum.influence")
    run, train_part, test_part = tiny_run

    def load(net, name):
        net.load_state_dict(run.checkpoints[int(name)].state)
        return run.checkpoints[int(name)].lr

    theirs = captum.TracInCP(
        run.model,
        torch.utils.data.TensorDataset(train_part.x, train_part.y),
        checkpoints=[str(i) for i in range(len(run.checkpoints))],
        checkpoints_load_func=load,
        loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"),
        batch_size=4,
        sample_wise_grads_per_batch=True,
    )
    engine = TracInCP(run.model, run.checkpoints)
    ours = engine.influence(train_part, test_part)
    matrix = theirs.influence((test_part.x, test_part.y), k=None).T
    assert (matrix - ours).abs().max() / ours.abs().max() < 1e-4
    self_theirs = theirs.self_influence(inputs=None)
    assert torch.allclose(self_theirs, engine.self_influence(train_part), rtol=1e-4)


def test_several_summed_influences_come_from_one_pass_and_equal_separate_calls(tiny_run, digits_split):
    run, train_part, _ = tiny_run
    _, test_set = digits_split
    tests = [test_set.subset(torch.arange(i, i + 6)) for i in (0, 10, 20)]
    engine = TracInCP(run.model, run.checkpoints, batch_size=3)
    self_scores, summed = engine.self_and_summed_influences(train_part, tests)
    assert torch.allclose(self_scores, engine.self_influence(train_part), rtol=1e-5)
    for test, got in zip(tests, summed):
        expected = engine.influence(train_part, test).sum(1)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6 * expected.abs().max())
    assert not torch.allclose(summed[0], summed[1])  # each test set its own sums


@pytest.mark.parametrize("order", ["self_first", "test_first"])
def test_tracin_detectors_of_one_trial_share_one_gradient_pass_whatever_their_order(monkeypatch, order):
    """Issue 19: tracin_self listed before two tracin_test detectors (each with its own test rows) used to
    compute the per-sample gradients once for itself and again for the others; the runner now announces
    every detector's test rows first (``Detector.plan``) and one pass serves all three, with the scores
    each computes alone."""
    from poisonlab.experiment import ExperimentConfig, load_splits, run_experiment
    from poisonlab.trial import method_seed

    passes = []
    original = TracInCP._pieces

    def counting(self, x, y, state, project):
        passes.append(len(x))
        return original(self, x, y, state, project)

    detectors = [{"name": "tracin_self"}, {"id": "opp", "name": "tracin_test", "num_test": 5},
                 {"id": "pos", "name": "tracin_test", "num_test": 5, "sign": "positive"}]  # fmt: skip
    if order == "test_first":
        detectors = detectors[1:] + detectors[:1]
    config = ExperimentConfig.model_validate(
        {"seed": 0, "model": "mlp", "data": {"name": "digits", "train_size": 300, "test_size": 50},
         "train": {"epochs": 2, "checkpoint_every": 1},
         "attacks": [{"name": "label_flip_random", "count": 10}], "detectors": detectors, "baseline": False}
    )  # fmt: skip
    monkeypatch.setattr(TracInCP, "_pieces", counting)
    art = run_experiment(config).first
    # 2 checkpoints x (300 training rows + 2 x 5 test rows): one pass; a second pass would add 600 rows
    assert sum(passes) == 2 * (300 + 10), sum(passes)
    monkeypatch.setattr(TracInCP, "_pieces", original)
    run, data = art.run, art.poisoned.data
    _, test_set, _ = load_splits(config.data, config.seed)
    np.testing.assert_allclose(
        art.scores["tracin_self"], self_influence(run.model, run.checkpoints, data).numpy(), rtol=1e-5
    )
    for ident, sign in (("opp", -1), ("pos", 1)):  # each its own test rows, drawn from its own stream
        seed = method_seed(config.seed, "detector", ident)
        pick = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(seed))[:5]
        alone = summed_influence(run.model, run.checkpoints, data, test_set.subset(pick)).numpy()
        tol = 1e-6 * np.abs(alone).max()
        np.testing.assert_allclose(art.scores[ident], sign * alone, rtol=1e-4, atol=tol)
