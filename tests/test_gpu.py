"""On a CUDA device, the engines give the CPU's numbers (not collected on a machine without one: conftest)."""

import pytest
import torch

from poisonlab.attacks import GradientMatching
from poisonlab.attacks.targeted import craft_perturbations
from poisonlab.detection.influence import TracInCP
from poisonlab.models import build_model
from poisonlab.training import TrainConfig, accuracy, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(scope="module")
def cpu_run(digits_split):
    train_set, test_set = digits_split
    model = build_model("cnn", train_set.input_shape, 10, seed=0, width=4, hidden=16)
    config = TrainConfig(lr=0.1, epochs=4, batch_size=32, checkpoint_every=2)
    return train(model, train_set, config, seed=0), train_set, test_set


def test_training_on_cuda_learns_like_cpu(cpu_run):
    run, train_set, test_set = cpu_run
    model = build_model("cnn", train_set.input_shape, 10, seed=0, width=4, hidden=16)
    config = TrainConfig(lr=0.1, epochs=4, batch_size=32, checkpoint_every=2, device="cuda")
    gpu = train(model, train_set, config, seed=0)
    assert next(gpu.model.parameters()).is_cuda
    assert abs(accuracy(gpu.model, test_set) - accuracy(run.model, test_set)) < 0.05


def test_tracin_on_cuda_equals_cpu(cpu_run):
    run, train_set, test_set = cpu_run
    rows, tests = train_set.subset(torch.arange(300)), test_set.subset(torch.arange(50))
    cpu = TracInCP(run.model, run.checkpoints)
    gpu = TracInCP(run.model.to("cuda"), run.checkpoints)
    run.model.to("cpu")
    pairs = [
        (cpu.self_influence(rows), gpu.self_influence(rows.to("cuda"))),
        (cpu.influence(rows, tests), gpu.influence(rows.to("cuda"), tests.to("cuda"))),
    ]
    for ours, theirs in pairs:
        assert not theirs.is_cuda
        assert (ours - theirs).abs().max() <= 1e-4 * ours.abs().max()


def test_gradient_matching_crafts_on_cuda(cpu_run):
    run, train_set, test_set = cpu_run
    model = run.model.to("cuda").eval()
    x_t, y_adv = test_set.x[:1].to("cuda"), int((test_set.y[0] + 1) % 10)
    pool = (train_set.y == y_adv).nonzero().flatten()[:20]
    base, labels = train_set.x[pool].to("cuda"), train_set.y[pool].to("cuda")
    generator = torch.Generator().manual_seed(0)
    objective = GradientMatching().objective([model], x_t, y_adv, base, labels, train_set, generator)
    crafted = craft_perturbations(base, objective, eps=16 / 255, steps=20, lr=0.1, generator=generator)
    assert crafted.delta.is_cuda and crafted.losses[-1] < crafted.losses[0]
    run.model.to("cpu")
