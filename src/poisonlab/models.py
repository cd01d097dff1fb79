"""Victim models, built by name from the input shape and the class count.

Every model is a :class:`Classifier`: ``features(x)`` gives the penultimate representation (what
detectors such as Deep k-NN or spectral signatures and attacks such as feature collision read) and
``head`` is the final linear layer, so ``model(x) == model.head(model.features(x))``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from torch import nn

from poisonlab.checks import check_int, check_seed, one_line
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


def _convnet_bn(input_shape, num_classes, width: int = 64) -> Classifier:
    """ConvNetBN as Witches' Brew's code builds it (the small ConvNet with batch norm that seed 002 and
    MetaPoison time): eight 3x3 conv-BN-ReLU layers of widths w, 2w, 2w, 4w, 4w, 4w | 4w, 4w, each group
    followed by a 3x3 max-pool, then the linear head on the flattened maps (36w features at 32x32)."""
    c, h, w = input_shape
    if h < 9 or w < 9:
        raise ConfigError(f"model 'convnet_bn' needs images of at least 9x9 pixels, got {h}x{w}")
    layers: list[nn.Module] = []
    for group in ([width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width], [4 * width, 4 * width]):
        for cout in group:
            layers += [nn.Conv2d(c, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            c = cout
        layers.append(nn.MaxPool2d(3))
    layers.append(nn.Flatten())
    return Classifier(nn.Sequential(*layers), c * (h // 3 // 3) * (w // 3 // 3), num_classes)


MODELS = {
    "logreg": (_logistic_regression, "multinomial logistic regression on the flattened pixels"),
    "mlp": (_mlp, "two hidden layers of 256 ReLU units"),
    "cnn": (_cnn, "small CNN: two conv-pool blocks and a 128-unit hidden layer (8x8, 28x28, 32x32 inputs)"),
    "resnet18": (_resnet18, "CIFAR-style ResNet-18 with batch norm"),
    "convnet_bn": (_convnet_bn, "ConvNetBN (Witches' Brew's code, seed 002's timing model): 8 conv-BN-ReLU"),
}


def build_model(name: str, input_shape, num_classes: int, *, seed: int | None = None, **kwargs) -> Classifier:
    """Build the model called ``name`` for images of ``input_shape`` (C, H, W) and ``num_classes``.

    ``seed`` fixes the initial weights without touching the global random state; ``kwargs`` are the
    model's size parameters (``hidden``, ``width``: positive integers).
    """
    where = "build_model"
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a model name (a string), got {type(name).__name__}")
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    if isinstance(input_shape, str) or not isinstance(input_shape, Sequence) or len(input_shape) != 3:
        raise ConfigError(f"{where}: input_shape must be (C, H, W), got {input_shape!r}")
    input_shape = tuple(
        check_int(v, f"{where}: input_shape[{i}]", minimum=1) for i, v in enumerate(input_shape)
    )
    num_classes = check_int(num_classes, f"{where}: num_classes", minimum=2)
    if seed is not None:
        seed = check_seed(seed, f"{where}: seed")
    factory = MODELS[name][0]
    known = list(inspect.signature(factory).parameters)[2:]
    for key, value in kwargs.items():
        if key not in known:
            takes = f"it takes {', '.join(known)}" if known else "it takes no size parameter"
            raise ConfigError(f"{where}: model {name!r} has no parameter {key!r}; {takes}")
        kwargs[key] = check_int(value, f"{where}: {key}", minimum=1)
    if seed is None:
        return factory(input_shape, num_classes, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(input_shape, num_classes, **kwargs)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; a named device must exist on this machine."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str | torch.device):
        raise ConfigError(f"device must be a name such as 'cpu' or 'auto', got {type(device).__name__}")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}: {one_line(err)}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine (use cpu or auto)")
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available on this machine (use 'cpu' or 'auto')")
    return resolved
