import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from poisonlab.attacks import TargetedLabelFlip
from poisonlab.detection import influence, self_influence, summed_influence
from poisonlab.detection.tracin import parameter_names
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


def test_self_influence_ranks_targeted_flips_on_digits(digits_split):
    train_set, _ = digits_split
    poisoned = TargetedLabelFlip(source=3, target=9, fraction=0.2).craft(
        train_set, generator=torch.Generator().manual_seed(0)
    )
    model = build_model("cnn", train_set.input_shape, 10, seed=0)
    config = TrainConfig(lr=0.05, epochs=20, batch_size=32, milestones=(15,), checkpoint_every=4)
    run = train(model, poisoned.data, config, seed=0)
    scores = self_influence(run.model, run.checkpoints, poisoned.data).numpy()
    auroc = roc_auc_score(poisoned.is_poisoned.numpy(), scores)
    assert auroc >= 0.95, auroc
    # the median poison scores far above the median clean row
    is_poison = poisoned.is_poisoned.numpy()
    assert np.median(scores[is_poison]) > 100 * np.median(scores[~is_poison])
