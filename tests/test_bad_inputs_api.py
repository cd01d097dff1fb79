"""Table-driven bad-input suite of the Python API (issue 14): every public surface answers a bad argument with
a typed PoisonlabError whose message is one line naming the problem, before any work, and leaves what it was
given unchanged.

Each case is (id, call, expected exception type, message regex). ``call`` receives the shared tiny world
(a 40-row 8x8 data set of 4 classes, a cnn trained two epochs on it with its checkpoints, models of other
shapes, a generator); after every case the world's data, models, checkpoints, model modes and generator
state are compared with a snapshot taken before. Cases that build their own bad input (a NaN copy of a
model, a checkpoint of another architecture) build it from copies, never from the world's objects.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from poisonlab.data import (
    Dataset,
    load_cifar10,
    load_dataset,
    load_image_folder,
    load_mnist,
    load_npz,
    stratified_subset,
    train_test_split,
)
from poisonlab.detection import TracInCP
from poisonlab.detection.strip import Strip, boundary_for_frr
from poisonlab.errors import ConfigError, DataError, PoisonlabError
from poisonlab.metrics import (
    aggregate,
    binomial_se,
    detection_metrics,
    mad_threshold,
    standard_errors,
    top_fraction,
)
from poisonlab.models import build_model, resolve_device
from poisonlab.purification import select_reference
from poisonlab.registry import create
from poisonlab.training import Checkpoint, TrainConfig, TrainRun, accuracy, predict, train, train_head

CLASSES = ("a", "b", "c", "d")


def _data(n: int, seed: int, shape=(1, 8, 8), classes=CLASSES, name="tiny") -> Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(classes)
    return Dataset(torch.rand(n, *shape, generator=g), y, classes, name)


@cache
def world() -> SimpleNamespace:
    """The shared inputs: built once, never changed by any case (checked after each)."""
    train_set, test_set = _data(40, 0), _data(20, 1)
    cnn = build_model("cnn", (1, 8, 8), 4, seed=0, width=4, hidden=16)
    run = train(cnn, train_set, TrainConfig(epochs=2, batch_size=20, device="cpu"), seed=0)
    return SimpleNamespace(
        train=train_set,
        test=test_set,
        big=_data(12, 2, shape=(1, 28, 28)),
        three=_data(12, 3, classes=("a", "b", "c")),
        cnn=run.model,
        run=run,
        mlp28=build_model("mlp", (1, 28, 28), 4, seed=0, hidden=8),
        logreg3=build_model("logreg", (1, 8, 8), 3, seed=0),
        logreg4=build_model("logreg", (1, 8, 8), 4, seed=0),
        triggered=_data(6, 4).x,
        gen=torch.Generator().manual_seed(0),
    )


def _snapshot(w: SimpleNamespace) -> dict:
    out = {}
    for key, value in vars(w).items():
        if isinstance(value, Dataset):
            out[key] = (value.x.clone(), value.y.clone(), value.classes)
        elif isinstance(value, nn.Module):
            out[key] = ({k: v.clone() for k, v in value.state_dict().items()}, value.training)
        elif isinstance(value, torch.Tensor):
            out[key] = value.clone()
        elif isinstance(value, torch.Generator):
            out[key] = value.get_state()
        elif isinstance(value, TrainRun):
            out[key] = [(c.lr, {k: v.clone() for k, v in c.state.items()}) for c in value.checkpoints]
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------------------------------------------- helpers
def nan_copy(model: nn.Module) -> nn.Module:
    bad = copy.deepcopy(model)
    with torch.no_grad():
        next(bad.parameters()).view(-1)[0] = float("nan")
    return bad


def ckpts(w, *, lr=None, nan=False, other=False, drop=None) -> list[Checkpoint]:
    """Copies of the run's checkpoints with one defect."""
    out = []
    for c in w.run.checkpoints:
        state = {k: v.clone() for k, v in c.state.items()}
        if nan:
            state["head.weight"][0, 0] = float("nan")
        if other:
            state = {k: v.clone() for k, v in w.logreg3.state_dict().items()}
        if drop:
            state.pop(drop)
        out.append(Checkpoint(c.epoch, c.lr if lr is None else lr, state))
    return out


def engine(w, **options) -> TracInCP:
    return TracInCP(w.cnn, w.run.checkpoints, **options)


def frozen(model: nn.Module) -> nn.Module:
    out = copy.deepcopy(model)
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def ref_mask(w, n=None, value=True) -> torch.Tensor:
    mask = torch.zeros(len(w.train) if n is None else n, dtype=torch.bool)
    mask[::2] = value
    return mask


def one_class() -> Dataset:
    return Dataset(torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.int64), ("only",), "single")


def empty() -> Dataset:
    return Dataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64), CLASSES, "empty")


def trusted(w, *, label=None, nan=False) -> Dataset:
    """A copy of the training set changed behind the validating constructor's back."""
    x, y = w.train.x.clone(), w.train.y.clone()
    if label is not None:
        y[0] = label
    if nan:
        x[0, 0, 0, 0] = float("nan")
    return Dataset._trusted(x, y, CLASSES, "tampered")


def big_png(path: Path) -> str:
    from PIL import Image

    Image.new("L", (4200, 4200)).save(path)  # 17.6 M pixels: above the trigger pattern cap
    return str(path)


def craft(name: str, w, *, data=None, generator="default", victim=None, test=None, **params):
    attack = create("attack", {"name": name, **params})
    gen = w.gen if generator == "default" else generator
    return attack.craft(w.train if data is None else data, generator=gen, victim=victim, test=test)


def scores(name: str, w, *, data=None, run="default", test=None, generator=None, **params):
    detector = create("detector", {"name": name, **params})
    return detector.scores(
        w.train if data is None else data, w.run if run == "default" else run, test=test, generator=generator
    )


def purify(name: str, w, mask=None, generator="default", **kwargs):
    purifier = create("purifier", name)
    gen = w.gen if generator == "default" else generator
    return purifier.purify(w.train, ref_mask(w) if mask is None else mask, generator=gen, **kwargs)


def repair(w, model=None, clean=None, **kwargs):
    defense = create("defense", {"name": "fine_pruning", "finetune_epochs": 0})
    return defense.repair(w.cnn if model is None else model, w.test if clean is None else clean, **kwargs)


def strip(w, model=None, clean=None, triggered=None, generator="default"):
    gen = w.gen if generator == "default" else generator
    return Strip(num_overlays=2).evaluate(
        w.cnn if model is None else model,
        w.test if clean is None else clean,
        w.triggered if triggered is None else triggered,
        gen,
    )


@dataclass(frozen=True)
class Case:
    id: str
    call: object
    error: type[PoisonlabError]
    match: str


C, D = ConfigError, DataError
ATTACKS = (
    "label_flip_targeted", "label_flip_random", "badnets", "blend", "sleeper_agent", "feature_collision",
    "first_order", "metapoison", "gradient_matching", "gradient_canceling", "tgda",
)  # fmt: skip
DETECTORS = ("spectral", "activation_clustering", "knn", "knn_k", "tracin_self", "tracin_test")
GENERATOR = r"generator must be a torch\.Generator"
DATASET = r"must be a poisonlab Dataset, got Tensor"

CASES: list[Case] = [
    # -- data constructors and loaders, called from Python ----------------------------------------------
    Case(
        "dataset-3d-x",
        lambda w: Dataset(torch.rand(4, 8, 8), torch.zeros(4, dtype=torch.int64), CLASSES),
        D,
        r"4-D",
    ),
    Case(
        "dataset-float-y",
        lambda w: Dataset(torch.rand(4, 1, 8, 8), torch.zeros(4), CLASSES),
        D,
        r"1-D integer",
    ),
    Case(
        "dataset-row-mismatch",
        lambda w: Dataset(torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.int64), CLASSES),
        D,
        r"4 rows but y has 3",
    ),
    Case(
        "dataset-nan-x",
        lambda w: Dataset(torch.full((2, 1, 8, 8), float("nan")), torch.zeros(2, dtype=torch.int64), CLASSES),
        D,
        r"NaN",
    ),
    Case(
        "dataset-x-above-1",
        lambda w: Dataset(torch.full((2, 1, 8, 8), 2.0), torch.zeros(2, dtype=torch.int64), CLASSES),
        D,
        r"\[0, 1\]",
    ),
    Case(
        "dataset-label-out-of-range",
        lambda w: Dataset(torch.rand(2, 1, 8, 8), torch.tensor([0, 7]), CLASSES),
        D,
        r"label 7 out of range",
    ),
    Case(
        "dataset-no-classes",
        lambda w: Dataset(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64), ()),
        D,
        r"classes is empty",
    ),
    Case(
        "dataset-duplicate-classes",
        lambda w: Dataset(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64), ("a", "a")),
        D,
        r"duplicate class",
    ),
    Case(
        "dataset-list-x",
        lambda w: Dataset([[0.0]], torch.zeros(1, dtype=torch.int64), CLASSES),
        D,
        r"must be tensors",
    ),
    Case("subset-out-of-range", lambda w: w.train.subset([0, 99]), D, r"index 99 out of range"),
    Case("subset-float-index", lambda w: w.train.subset([0.5]), D, r"integers or a bool mask"),
    Case(
        "replace-rows-out-of-box",
        lambda w: w.train.replace_rows([0], torch.full((1, 1, 8, 8), 2.0)),
        D,
        r"x values must be in \[0, 1\]",
    ),
    Case(
        "replace-rows-shape",
        lambda w: w.train.replace_rows([0, 1], torch.zeros(1, 1, 8, 8)),
        D,
        r"replacement rows have shape \(1, 1, 8, 8\), expected \(2, 1, 8, 8\)",
    ),
    Case(
        "replace-rows-label",
        lambda w: w.train.replace_rows([0], torch.zeros(1, 1, 8, 8), 9),
        D,
        r"label 9 out of range for 4 classes",
    ),
    Case(
        "with-labels-out-of-range",
        lambda w: w.train.with_labels(torch.full((40,), 9)),
        D,
        r"label 9 out of range",
    ),
    Case("stratified-subset-too-many", lambda w: stratified_subset(w.train, 41), D, r"cannot take 41 rows"),
    Case(
        "split-bad-fraction",
        lambda w: train_test_split(w.train, 1.5),
        D,
        r"test_fraction must be in \(0, 1\)",
    ),
    Case("load-npz-missing", lambda w: load_npz("/nonexistent/poisonlab/x.npz"), D, r"not found"),
    Case("load-mnist-missing-root", lambda w: load_mnist("/nonexistent/poisonlab"), D, r"not found"),
    Case("load-cifar-root-is-file", lambda w: load_cifar10(__file__), D, r"not a folder"),
    Case("load-folder-missing", lambda w: load_image_folder("/nonexistent/poisonlab"), D, r"not found"),
    Case("load-dataset-unknown", lambda w: load_dataset("imagenet"), D, r"unknown dataset 'imagenet'"),
    # -- build_model and devices ---------------------------------------------------------------------------
    Case("build-name-list", lambda w: build_model(["cnn"], (1, 8, 8), 4), C, r"name must be a model name"),
    Case("build-name-unknown", lambda w: build_model("vgg", (1, 8, 8), 4), C, r"unknown model 'vgg'"),
    Case(
        "build-classes-float",
        lambda w: build_model("cnn", (1, 8, 8), 2.5),
        C,
        r"num_classes must be an integer, got 2\.5",
    ),
    Case(
        "build-classes-one", lambda w: build_model("cnn", (1, 8, 8), 1), C, r"num_classes must be at least 2"
    ),
    Case(
        "build-classes-bool",
        lambda w: build_model("logreg", (1, 8, 8), True),
        C,
        r"num_classes must be an integer",
    ),
    Case("build-shape-2d", lambda w: build_model("cnn", (8, 8), 4), C, r"input_shape must be \(C, H, W\)"),
    Case(
        "build-shape-zero",
        lambda w: build_model("mlp", (1, 0, 8), 4),
        C,
        r"input_shape\[1\] must be at least 1",
    ),
    Case(
        "build-shape-float",
        lambda w: build_model("mlp", (1, 8.5, 8), 4),
        C,
        r"input_shape\[1\] must be an integer",
    ),
    Case("build-cnn-too-small", lambda w: build_model("cnn", (1, 2, 2), 4), C, r"at least 4x4"),
    Case(
        "build-width-zero",
        lambda w: build_model("cnn", (1, 8, 8), 4, width=0),
        C,
        r"width must be at least 1",
    ),
    Case(
        "build-hidden-float",
        lambda w: build_model("mlp", (1, 8, 8), 4, hidden=2.5),
        C,
        r"hidden must be an integer",
    ),
    Case(
        "build-unknown-kwarg", lambda w: build_model("cnn", (1, 8, 8), 4, depth=3), C, r"no parameter 'depth'"
    ),
    Case(
        "build-logreg-kwarg", lambda w: build_model("logreg", (1, 8, 8), 4, width=3), C, r"no size parameter"
    ),
    Case(
        "build-seed-negative",
        lambda w: build_model("cnn", (1, 8, 8), 4, seed=-1),
        C,
        r"seed must be at least 0",
    ),
    Case(
        "build-seed-overflow",
        lambda w: build_model("cnn", (1, 8, 8), 4, seed=2**64),
        C,
        r"seed must be at most",
    ),
    Case(
        "build-seed-string",
        lambda w: build_model("cnn", (1, 8, 8), 4, seed="0"),
        C,
        r"seed must be an integer",
    ),
    Case("device-unknown", lambda w: resolve_device("tpu9"), C, r"unknown device 'tpu9'"),
    Case("device-not-a-name", lambda w: resolve_device(3), C, r"device must be a name"),
    # -- train, train_head, predict, accuracy ----------------------------------------------------------------
    Case(
        "train-28x28-model-on-8x8",
        lambda w: train(w.mlp28, w.train),
        C,
        r"train: model does not accept data's images of shape \(1, 8, 8\)",
    ),
    Case(
        "train-labels-beyond-outputs",
        lambda w: train(w.logreg3, w.train),
        C,
        r"train: model has 3 outputs but data has 4 classes",
    ),
    Case("train-raw-tensor", lambda w: train(w.logreg4, w.train.x), C, r"train: data " + DATASET),
    Case("train-empty", lambda w: train(w.logreg4, empty()), D, r"train: data has 0 rows"),
    Case("train-one-class", lambda w: train(w.logreg4, one_class()), D, r"data has 1 class\(es\)"),
    Case(
        "train-config-dict",
        lambda w: train(w.logreg4, w.train, {"epochs": 1}),
        C,
        r"config must be a TrainConfig",
    ),
    Case(
        "train-seed-negative",
        lambda w: train(w.logreg4, w.train, seed=-1),
        C,
        r"train: seed must be at least 0",
    ),
    Case(
        "train-seed-float",
        lambda w: train(w.logreg4, w.train, seed=1.5),
        C,
        r"train: seed must be an integer",
    ),
    Case(
        "train-eval-other-shape",
        lambda w: train(w.logreg4, w.train, eval_data=w.big),
        C,
        r"eval_data has images of shape \(1, 28, 28\)",
    ),
    Case(
        "train-eval-other-classes",
        lambda w: train(w.logreg4, w.train, eval_data=w.three),
        C,
        r"eval_data has 3 classes",
    ),
    Case(
        "train-model-not-module",
        lambda w: train("cnn", w.train),
        C,
        r"model must be a torch nn\.Module, got str",
    ),
    Case(
        "train-nan-weights",
        lambda w: train(nan_copy(w.logreg4), w.train),
        D,
        r"model has non-finite values in 'head\.weight'",
    ),
    Case("train-frozen-model", lambda w: train(frozen(w.logreg4), w.train), C, r"no trainable parameter"),
    Case(
        "train-tampered-labels",
        lambda w: train(w.logreg4, trusted(w, label=9)),
        D,
        r"label 9, out of range for 4",
    ),
    Case("train-tampered-nan", lambda w: train(w.logreg4, trusted(w, nan=True)), D, r"data\.x contains NaN"),
    Case(
        "train-head-no-head",
        lambda w: train_head(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), w.train),
        C,
        r"train_head: model needs features",
    ),
    Case("train-head-28x28", lambda w: train_head(w.mlp28, w.train), C, r"train_head: model does not accept"),
    Case(
        "train-head-outputs",
        lambda w: train_head(w.logreg3, w.train),
        C,
        r"model has 3 outputs but data has 4",
    ),
    Case("train-head-empty", lambda w: train_head(w.cnn, empty()), D, r"train_head: data has 0 rows"),
    Case(
        "predict-28x28",
        lambda w: predict(w.mlp28, w.train.x),
        C,
        r"predict: model does not accept x of shape",
    ),
    Case("predict-list", lambda w: predict(w.cnn, [[0.0]]), C, r"predict: x must be a tensor"),
    Case(
        "predict-batch-zero",
        lambda w: predict(w.cnn, w.train.x, batch_size=0),
        C,
        r"batch_size must be at least 1",
    ),
    Case("accuracy-raw-tensor", lambda w: accuracy(w.cnn, w.test.x), C, r"accuracy: data " + DATASET),
    Case("accuracy-outputs", lambda w: accuracy(w.logreg3, w.test), C, r"model has 3 outputs but data has 4"),
    Case("accuracy-nan-model", lambda w: accuracy(nan_copy(w.cnn), w.test), D, r"non-finite values"),
    # -- every registered attack's craft ---------------------------------------------------------------------
    *[
        Case(
            f"craft-{a}-raw-tensor",
            lambda w, a=a: craft(a, w, data=w.train.x),
            C,
            rf"{a}\.craft: train " + DATASET,
        )
        for a in ATTACKS
    ],
    *[
        Case(
            f"craft-{a}-no-generator",
            lambda w, a=a: craft(a, w, generator=None),
            C,
            rf"{a}\.craft: " + GENERATOR,
        )
        for a in ATTACKS
    ],
    Case(
        "craft-numpy-generator",
        lambda w: craft("badnets", w, generator=np.random.default_rng(0)),
        C,
        GENERATOR + r".*got Generator",
    ),
    Case(
        "craft-one-class", lambda w: craft("label_flip_random", w, data=one_class()), D, r"train has 1 class"
    ),
    Case("craft-empty", lambda w: craft("label_flip_random", w, data=empty()), D, r"train has 0 rows"),
    Case(
        "craft-flip-class-12",
        lambda w: craft("label_flip_targeted", w, source=12, target=1),
        C,
        r"class 12 is not in",
    ),
    Case(
        "craft-flip-budget",
        lambda w: craft("label_flip_targeted", w, source=0, target=1, count=50),
        C,
        r"asked for 50 rows but only 10",
    ),
    Case(
        "craft-random-flip-budget",
        lambda w: craft("label_flip_random", w, count=41),
        C,
        r"asked for 41 rows but only 40",
    ),
    Case("craft-badnets-target", lambda w: craft("badnets", w, target=9), C, r"target class 9 is not in"),
    Case(
        "craft-badnets-patch",
        lambda w: craft("badnets", w, patch_size=20),
        C,
        r"patch_size 20 is larger than the 8x8",
    ),
    Case(
        "craft-badnets-position",
        lambda w: craft("badnets", w, position=(7, 7)),
        C,
        r"does not fit 8x8 images",
    ),
    Case(
        "craft-badnets-budget", lambda w: craft("badnets", w, count=31), C, r"asked for 31 rows but only 30"
    ),
    Case(
        "craft-blend-missing-image",
        lambda w: craft("blend", w, pattern="image", image_path="/nonexistent/t.png"),
        D,
        r"blend image.*not found",
    ),
    Case(
        "craft-blend-huge-image",
        lambda w: craft("blend", w, pattern="image", image_path=big_png(Path(w.tmp) / "big.png")),
        D,
        r"blend image is 4200x4200 pixels",
    ),
    Case(
        "craft-sleeper-source", lambda w: craft("sleeper_agent", w, source=9), C, r"source class 9 is not in"
    ),
    Case(
        "craft-sleeper-budget",
        lambda w: craft("sleeper_agent", w, count=11),
        C,
        r"11 poisons asked, the target class has 10",
    ),
    Case("craft-targeted-no-test", lambda w: craft("feature_collision", w), C, r"needs test data"),
    Case(
        "craft-targeted-index",
        lambda w: craft("first_order", w, test=w.test, target_index=999),
        C,
        r"target_index 999 >= 20 test rows",
    ),
    Case(
        "craft-targeted-class",
        lambda w: craft("gradient_matching", w, test=w.test, adversarial_class=7),
        C,
        r"class 7 is not among the 4",
    ),
    Case(
        "craft-targeted-budget",
        lambda w: craft("metapoison", w, test=w.test, count=11),
        C,
        r"11 poisons asked.*has 10 rows",
    ),
    Case(
        "craft-targeted-no-target-row",
        lambda w: craft("first_order", w, test=w.test.subset(w.test.y != 2), target_class=2),
        C,
        r"no test row of class 2",
    ),
    Case(
        "craft-tgda-val-size",
        lambda w: craft("tgda", w, val_size=40),
        C,
        r"val_size 40 leaves no training row",
    ),
    Case(
        "craft-victim-28x28",
        lambda w: craft("gradient_canceling", w, victim=w.mlp28),
        C,
        r"victim does not accept train's images",
    ),
    Case(
        "craft-victim-outputs",
        lambda w: craft("feature_collision", w, test=w.test, victim=w.logreg3),
        C,
        r"victim has 3 outputs but train has 4",
    ),
    Case(
        "craft-victim-nan",
        lambda w: craft("gradient_canceling", w, victim=nan_copy(w.cnn)),
        D,
        r"victim has non-finite values",
    ),
    Case(
        "craft-test-other-shape",
        lambda w: craft("first_order", w, test=w.big),
        C,
        r"test has images of shape \(1, 28, 28\)",
    ),
    Case(
        "create-attack-inf-lr",
        lambda w: create("attack", {"name": "gradient_canceling", "train": {"lr": float("inf")}}),
        C,
        r"train\.lr",
    ),
    Case(
        "create-attack-fraction",
        lambda w: create("attack", {"name": "badnets", "fraction": 2}),
        C,
        r"badnets\.fraction",
    ),
    # -- every detector's scores -----------------------------------------------------------------------------
    *[
        Case(
            f"scores-{d}-raw-tensor",
            lambda w, d=d: scores(d, w, data=w.train.x),
            C,
            rf"{d}\.scores: data " + DATASET,
        )
        for d in DETECTORS
    ],
    *[
        Case(
            f"scores-{d}-no-run",
            lambda w, d=d: scores(d, w, run=None, test=w.test),
            C,
            rf"{d}\.scores: run must be a TrainRun",
        )
        for d in DETECTORS
    ],
    Case(
        "scores-run-of-other-shape",
        lambda w: scores("spectral", w, run=TrainRun(w.mlp28, [])),
        C,
        r"run\.model does not accept data's images",
    ),
    Case(
        "scores-run-outputs",
        lambda w: scores("knn", w, run=TrainRun(w.logreg3, [])),
        C,
        r"run\.model has 3 outputs",
    ),
    Case("scores-knn-k", lambda w: scores("knn", w, k=1000), C, r"k = 1000 is larger than the 40 rows"),
    Case("scores-tracin-test-no-test", lambda w: scores("tracin_test", w), C, r"test is missing or empty"),
    Case(
        "scores-tracin-test-too-few-test-rows",
        lambda w: scores("tracin_test", w, test=w.test, num_test=1000),
        C,
        r"num_test 1000 exceeds the \d+ rows of the test split",
    ),
    Case(
        "scores-test-other-classes",
        lambda w: scores("tracin_test", w, test=w.three),
        C,
        r"test has 3 classes",
    ),
    Case("scores-bad-generator", lambda w: scores("activation_clustering", w, generator=0), C, GENERATOR),
    Case("scores-simulated-no-truth", lambda w: scores("simulated", w), C, r"oracle"),
    Case(
        "scores-tracin-nan-checkpoint",
        lambda w: scores("tracin_self", w, run=TrainRun(w.cnn, ckpts(w, nan=True))),
        D,
        r"checkpoints\[0\] has non-finite values in 'head\.weight'",
    ),
    Case(
        "scores-tracin-negative-lr",
        lambda w: scores("tracin_self", w, run=TrainRun(w.cnn, ckpts(w, lr=-0.1))),
        D,
        r"checkpoints\[0\]\.lr must be a finite positive",
    ),
    Case(
        "create-tracin-memory-budget",
        lambda w: create("detector", {"name": "tracin_self", "memory_budget": "2XB"}),
        C,
        r"memory_budget.*not a size",
    ),
    # -- the TracInCP engine ---------------------------------------------------------------------------------
    Case("tracin-no-checkpoints", lambda w: TracInCP(w.cnn, []), C, r"at least one checkpoint"),
    Case(
        "tracin-other-architecture",
        lambda w: TracInCP(w.cnn, ckpts(w, other=True)),
        D,
        r"not of the model's architecture \(missing 'body",
    ),
    Case(
        "tracin-missing-key",
        lambda w: TracInCP(w.cnn, ckpts(w, drop="head.bias")),
        D,
        r"missing 'head\.bias'",
    ),
    Case(
        "tracin-wrong-shape",
        lambda w: TracInCP(w.logreg4, ckpts(w, other=True)),
        D,
        r"'head\.weight' has shape \(3, 64\), the model \(4, 64\)",
    ),
    Case("tracin-nan-checkpoint", lambda w: TracInCP(w.cnn, ckpts(w, nan=True)), D, r"non-finite values"),
    Case(
        "tracin-negative-lr",
        lambda w: TracInCP(w.cnn, ckpts(w, lr=-1.0)),
        D,
        r"lr must be a finite positive learning rate, got -1\.0",
    ),
    Case(
        "tracin-nan-lr",
        lambda w: TracInCP(w.cnn, ckpts(w, lr=float("nan"))),
        D,
        r"lr must be a finite positive",
    ),
    Case("tracin-checkpoints-string", lambda w: TracInCP(w.cnn, "ckpt.pt"), C, r"checkpoints must be a list"),
    Case(
        "tracin-checkpoint-dict",
        lambda w: TracInCP(w.cnn, [w.cnn.state_dict()]),
        C,
        r"checkpoints\[0\] must be a Checkpoint",
    ),
    Case(
        "tracin-model-not-module",
        lambda w: TracInCP(None, w.run.checkpoints),
        C,
        r"model must be a torch nn\.Module",
    ),
    Case("tracin-memory-budget", lambda w: engine(w, memory_budget="lots"), C, r"not a size"),
    Case(
        "tracin-memory-budget-nan",
        lambda w: engine(w, memory_budget=float("nan")),
        C,
        r"finite number of bytes",
    ),
    Case(
        "tracin-projection-zero",
        lambda w: engine(w, projection_dim=0),
        C,
        r"projection_dim must be at least 1",
    ),
    Case("tracin-unknown-layer", lambda w: engine(w, layers=["nope"]), C, r"unknown layer"),
    Case(
        "tracin-top-k-negative",
        lambda w: engine(w).top_k(w.train, w.test, k=-1),
        C,
        r"top_k: k must be at least 1, got -1",
    ),
    Case("tracin-top-k-float", lambda w: engine(w).top_k(w.train, w.test, k=2.5), C, r"k must be an integer"),
    Case(
        "tracin-self-empty",
        lambda w: engine(w).self_influence(empty()),
        D,
        r"self_influence: data has 0 rows",
    ),
    Case(
        "tracin-influence-raw-test",
        lambda w: engine(w).influence(w.train, w.test.x),
        C,
        r"influence: test " + DATASET,
    ),
    Case(
        "tracin-influence-28x28",
        lambda w: engine(w).influence(w.big, w.big),
        C,
        r"does not accept train's images of shape \(1, 28, 28\)",
    ),
    Case(
        "tracin-summed-empty-test",
        lambda w: engine(w).summed_influence(w.train, empty()),
        D,
        r"test has 0 rows",
    ),
    # -- purifiers -------------------------------------------------------------------------------------------
    *[
        Case(
            f"purify-{p}-raw-tensor",
            lambda w, p=p: create("purifier", p).purify(w.train.x, ref_mask(w), generator=w.gen),
            C,
            rf"{p}\.purify: data " + DATASET,
        )
        for p in ("ref", "random_noise", "mendata")
    ],
    *[
        Case(
            f"purify-{p}-no-generator",
            lambda w, p=p: purify(p, w, generator=None),
            C,
            rf"{p}\.purify: " + GENERATOR,
        )
        for p in ("random_noise", "friendly_noise", "mendata")
    ],
    Case(
        "purify-mask-length",
        lambda w: purify("ref", w, mask=ref_mask(w, n=5)),
        C,
        r"reference_mask must be a 1-D bool tensor",
    ),
    Case(
        "purify-mask-empty",
        lambda w: purify("remove", w, mask=ref_mask(w, value=False)),
        C,
        r"reference set is empty",
    ),
    Case("purify-mask-string", lambda w: purify("ref", w, mask="all"), C, r"reference_mask must be"),
    Case(
        "purify-model-28x28",
        lambda w: purify("friendly_noise", w, model=w.mlp28),
        C,
        r"friendly_noise\.purify: model does not accept",
    ),
    Case(
        "purify-model-outputs",
        lambda w: purify("friendly_noise", w, model=w.logreg3),
        C,
        r"model has 3 outputs",
    ),
    Case(
        "purify-extractor-28x28",
        lambda w: purify("mendata", w, extractor=w.mlp28),
        C,
        r"mendata\.purify: extractor does not accept",
    ),
    Case(
        "purify-extractor-nan",
        lambda w: purify("mendata", w, extractor=nan_copy(w.cnn)),
        D,
        r"extractor has non-finite values",
    ),
    Case(
        "select-reference-not-detector",
        lambda w: select_reference("knn", w.train),
        C,
        r"detector must be a registered detector",
    ),
    Case(
        "select-reference-features",
        lambda w: select_reference(create("detector", "knn_k"), w.train, features=torch.zeros(3, 2)),
        C,
        r"features must be a \(rows, dims\) tensor with 40 rows",
    ),
    # -- fine-pruning repair ---------------------------------------------------------------------------------
    Case("repair-not-conv", lambda w: repair(w, model=w.logreg4), C, r"model needs a convolutional body"),
    Case(
        "repair-raw-tensor", lambda w: repair(w, clean=w.test.x), C, r"fine_pruning\.repair: clean " + DATASET
    ),
    Case("repair-28x28", lambda w: repair(w, model=w.mlp28), C, r"model does not accept clean's images"),
    Case(
        "repair-triggered-shape",
        lambda w: repair(w, triggered=w.big.x),
        C,
        r"triggered has images of shape \(1, 28, 28\)",
    ),
    Case(
        "repair-target", lambda w: repair(w, triggered=w.triggered, target=9), C, r"target must be at most 3"
    ),
    Case("repair-seed", lambda w: repair(w, seed=-5), C, r"seed must be at least 0"),
    Case(
        "repair-one-row",
        lambda w: repair(w, clean=w.test.subset([0])),
        D,
        r"clean has 1 row; at least 2 needed",
    ),
    # -- STRIP -----------------------------------------------------------------------------------------------
    Case(
        "strip-model-28x28", lambda w: strip(w, model=w.mlp28), C, r"strip\.evaluate: model does not accept"
    ),
    Case("strip-triggered-shape", lambda w: strip(w, triggered=w.big.x), C, r"triggered has images of shape"),
    Case("strip-triggered-list", lambda w: strip(w, triggered=[1, 2]), C, r"triggered must be a tensor"),
    Case("strip-no-generator", lambda w: strip(w, generator=None), C, r"strip\.evaluate: " + GENERATOR),
    Case("strip-empty-clean", lambda w: strip(w, clean=empty()), D, r"clean has 0 rows"),
    Case("strip-boundary-empty", lambda w: boundary_for_frr([], 0.1), C, r"no clean inputs"),
    Case("strip-boundary-nan", lambda w: boundary_for_frr([0.1, float("nan")], 0.1), C, r"NaN or inf"),
    Case("strip-boundary-frr", lambda w: boundary_for_frr([0.1, 0.2], 1.5), C, r"frr must be below 1"),
    # -- metrics ---------------------------------------------------------------------------------------------
    Case("mad-empty", lambda w: mad_threshold([]), C, r"mad_threshold: scores is empty"),
    Case("mad-nan", lambda w: mad_threshold([1.0, float("nan")]), C, r"NaN or inf"),
    Case("mad-2d", lambda w: mad_threshold(np.zeros((2, 2))), C, r"must be 1-D"),
    Case("mad-k-nan", lambda w: mad_threshold([1.0, 2.0], k=float("nan")), C, r"k must be a finite number"),
    Case("mad-strings", lambda w: mad_threshold(["a", "b"]), C, r"scores must be numbers"),
    Case(
        "top-fraction-above-1", lambda w: top_fraction(np.zeros(4), 2.0), C, r"fraction must be in \[0, 1\]"
    ),
    Case(
        "metrics-threshold-nan",
        lambda w: detection_metrics(np.zeros(4), np.zeros(4, bool), float("nan")),
        C,
        r"threshold must be a finite number",
    ),
    Case(
        "metrics-shape",
        lambda w: detection_metrics(np.zeros(4), np.zeros(3, bool), 0.0),
        C,
        r"differ in shape",
    ),
    Case(
        "metrics-float-mask",
        lambda w: detection_metrics(np.zeros(2), np.array([0.5, 1.0]), 0.0),
        C,
        r"is_poison must be a boolean mask",
    ),
    Case(
        "metrics-nonfinite-scores",
        lambda w: detection_metrics(np.array([1.0, np.inf]), np.zeros(2, bool), 0.0),
        C,
        r"non-finite",
    ),
    Case("aggregate-string", lambda w: aggregate("trials"), C, r"trials must be a list"),
    Case(
        "aggregate-value", lambda w: aggregate([{"acc": "high"}]), C, r"trials\[0\]\['acc'\] must be a number"
    ),
    Case("binomial-p", lambda w: binomial_se(1.5, 3), C, r"p must be a rate in \[0, 1\]"),
    Case("binomial-n", lambda w: binomial_se(0.5, -1), C, r"n must be at least 0"),
    Case(
        "standard-errors-trial",
        lambda w: standard_errors([1.0], {}, {}),
        C,
        r"trials\[0\] must be a metric mapping",
    ),
]

if not torch.cuda.is_available():
    CASES += [
        Case("device-cuda-missing", lambda w: resolve_device("cuda"), C, r"CUDA is not available"),
        Case(
            "train-config-cuda", lambda w: train(w.logreg4, w.train, TrainConfig(device="cuda")), C, r"CUDA"
        ),
    ]


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 90
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_typed_line_and_changes_nothing(case: Case, tmp_path):
    w = world()
    w.tmp = tmp_path
    before = _snapshot(w)
    with pytest.raises(PoisonlabError) as info:
        case.call(w)
    err = info.value
    assert type(err) is case.error, f"{type(err).__name__}: {err}"
    message = str(err)
    assert message and "\n" not in message and "Traceback" not in message, message
    assert re.search(case.match, message), f"{case.match!r} not in {message!r}"
    after = _snapshot(w)
    assert before.keys() == after.keys() and all(_same(before[k], after[k]) for k in before), case.id
