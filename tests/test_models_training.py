import pytest
import torch

from poisonlab.errors import ConfigError
from poisonlab.models import build_model
from poisonlab.training import TrainConfig, accuracy, augment_batch, train


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn", "resnet18", "convnet_bn"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_models_build_from_shape_and_expose_features(name, shape):
    kwargs = {"width": 8} if name in ("resnet18", "convnet_bn") else {}
    model = build_model(name, shape, 10, seed=0, **kwargs).eval()
    x = torch.rand(3, *shape)
    feats = model.features(x)
    assert feats.shape == (3, model.feature_dim)
    assert torch.allclose(model(x), model.head(feats), atol=1e-6)


def test_convnet_bn_has_the_reference_layout_and_learns_mnist(data_root):
    """Witches' Brew's ConvNetBN at width 64 on CIFAR-sized images: 8 convolutions each with batch norm,
    36 * 64 features, and its parameter count; at width 8 it learns a 1,000-image MNIST subset (3 epochs)."""
    from poisonlab.data import load_dataset, stratified_subset

    model = build_model("convnet_bn", (3, 32, 32), 10, seed=0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    widths = [64, 128, 128, 256, 256, 256, 256, 256]
    assert [m.out_channels for m in convs] == widths and len(norms) == 8 and model.feature_dim == 36 * 64
    expected = sum(9 * cin * cout + cout + 2 * cout for cin, cout in zip([3] + widths[:-1], widths))
    assert sum(p.numel() for p in model.parameters()) == expected + 36 * 64 * 10 + 10
    with pytest.raises(ConfigError, match="at least 9x9"):
        build_model("convnet_bn", (1, 8, 8), 10)
    train_set = stratified_subset(load_dataset("mnist", data_root, split="train"), 1000, seed=0)
    test_set = stratified_subset(load_dataset("mnist", data_root, split="test"), 500, seed=0)
    small = build_model("convnet_bn", train_set.input_shape, 10, seed=0, width=8)
    run = train(small, train_set, TrainConfig(epochs=3, lr=0.05, batch_size=64), seed=0)
    assert accuracy(run.model, test_set) > 0.6  # 0.75 measured (chance 0.1); still rising after 3 epochs


def test_model_seed_fixes_weights_without_touching_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("cnn", (1, 8, 8), 10, seed=5)
    after = torch.rand(1)
    b = build_model("cnn", (1, 8, 8), 10, seed=5)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_model_and_bad_config_are_rejected():
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        build_model("vgg", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="milestones"):
        TrainConfig(epochs=5, milestones=(7,))
    with pytest.raises(ValueError):
        TrainConfig(lr=-1)


def test_augment_batch_crops_and_flips_each_image():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, gen, hflip=True)
    assert out.shape == x.shape
    # every output pixel is either zero padding or a pixel of the same image
    for i in range(2):
        assert set(out[i].unique().tolist()) <= set(x[i].unique().tolist()) | {0.0}


def test_cnn_on_digits_reaches_95_percent_and_records_checkpoints(digits_split):
    train_set, test_set = digits_split
    model = build_model("cnn", train_set.input_shape, 10, seed=0)
    config = TrainConfig(lr=0.05, epochs=15, batch_size=32, milestones=(10,), checkpoint_every=5)
    run = train(model, train_set, config, seed=0, eval_data=test_set)
    assert accuracy(run.model, test_set) >= 0.95
    assert [c.epoch for c in run.checkpoints] == [5, 10, 15]
    assert [c.lr for c in run.checkpoints] == pytest.approx([0.05, 0.05, 0.005])
    assert len(run.history) == 15 and run.history[-1]["test_accuracy"] >= 0.95
    # checkpoints are copies, not views of the live weights
    assert not torch.equal(run.checkpoints[0].state["head.weight"], run.checkpoints[-1].state["head.weight"])


def test_training_is_reproducible_with_one_seed(digits_split):
    train_set, _ = digits_split
    config = TrainConfig(epochs=2, augment=True, hflip=False)
    runs = [
        train(build_model("mlp", train_set.input_shape, 10, seed=1), train_set, config, seed=1)
        for _ in range(2)
    ]
    assert runs[0].history == runs[1].history
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        assert torch.equal(a, b)
