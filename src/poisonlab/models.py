"""Victim models, built by name from the input shape and the class count.

Every model is a :class:`Classifier`: ``features(x)`` gives the penultimate representation (what
detectors such as Deep k-NN or spectral signatures and attacks such as feature collision read) and
``head`` is the final linear layer, so ``model(x) == model.head(model.features(x))``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from poisonlab.errors import ConfigError


class Classifier(nn.Module):
    """A feature extractor followed by one linear head."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape (N, feature_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _logistic_regression(input_shape, num_classes) -> Classifier:
    return Classifier(nn.Flatten(), math.prod(input_shape), num_classes)


def _mlp(input_shape, num_classes, hidden: int = 256) -> Classifier:
    body = nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
    )
    return Classifier(body, hidden, num_classes)


def _cnn(input_shape, num_classes, width: int = 32, hidden: int = 128) -> Classifier:
    """Two conv-ReLU-maxpool blocks and a hidden layer; sized for 8x8, 28x28 and 32x32 inputs."""
    c, h, w = input_shape
    if h < 4 or w < 4:
        raise ConfigError(f"model 'cnn' needs images of at least 4x4 pixels, got {h}x{w}")
    body = nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), hidden), nn.ReLU(),
    )  # fmt: skip
    return Classifier(body, hidden, num_classes)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _resnet18(input_shape, num_classes, width: int = 64) -> Classifier:
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), as in the poisoning literature."""
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    cin = width
    for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
        stride = 1 if i == 0 else 2
        layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*layers), cin, num_classes)


MODELS = {
    "logreg": (_logistic_regression, "multinomial logistic regression on the flattened pixels"),
    "mlp": (_mlp, "two hidden layers of 256 ReLU units"),
    "cnn": (_cnn, "small CNN: two conv-pool blocks and a 128-unit hidden layer (8x8, 28x28, 32x32 inputs)"),
    "resnet18": (_resnet18, "CIFAR-style ResNet-18 with batch norm"),
}


def build_model(name: str, input_shape, num_classes: int, *, seed: int | None = None, **kwargs) -> Classifier:
    """Build the model called ``name`` for images of ``input_shape`` (C, H, W) and ``num_classes``.

    ``seed`` fixes the initial weights without touching the global random state.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    factory = MODELS[name][0]
    if seed is None:
        return factory(input_shape, num_classes, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(input_shape, num_classes, **kwargs)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}: {err}") from None
