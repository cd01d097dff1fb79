"""One training function for every victim, surrogate and reference model.

:func:`train` runs SGD (momentum, weight decay) or Adam with learning-rate milestones, optional
random-crop + flip augmentation done on whole batches, and records checkpoints every ``k`` epochs
together with the learning rate in force during the epochs they close (what TracInCP weighs each
checkpoint by). One ``seed`` fixes the shuffling and the augmentation; the model's initial weights
are fixed by :func:`poisonlab.models.build_model`'s seed, so a run repeats exactly on the CPU.
"""

from __future__ import annotations

import copy
import time
import weakref
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from poisonlab.checks import (
    check_dataset,
    check_int,
    check_model_accepts,
    check_model_fits,
    check_same_space,
    check_seed,
)
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.models import resolve_device


class TrainConfig(BaseModel):
    """The training schedule; validated, so a bad value fails before any work starts."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0, description="initial learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    milestones: tuple[int, ...] = Field(
        (), description="epochs after which the learning rate is multiplied by lr_gamma"
    )
    lr_gamma: float = Field(0.1, gt=0, le=1)
    augment: bool = Field(False, description="random crop (pad H/8) and, if hflip, horizontal flip")
    hflip: bool = Field(True, description="flip horizontally when augmenting (turn off for digits)")
    checkpoint_every: int = Field(
        1, ge=1, description="record a checkpoint every k epochs (and after the last)"
    )
    device: str = "auto"

    @model_validator(mode="after")
    def _check_milestones(self):
        if any(m < 1 or m > self.epochs for m in self.milestones) or list(self.milestones) != sorted(
            self.milestones
        ):
            raise ValueError(
                f"milestones must be increasing epochs in [1, {self.epochs}], got {list(self.milestones)}"
            )
        return self

    def lr_at(self, epoch: int) -> float:
        """Learning rate in force during ``epoch`` (1-based)."""
        return self.lr * self.lr_gamma ** sum(1 for m in self.milestones if epoch > m)


@dataclass
class Checkpoint:
    """Parameters and buffers (on the CPU) after ``epoch``, with the learning rate used in that epoch."""

    epoch: int
    lr: float
    state: dict[str, torch.Tensor]


@dataclass
class TrainRun:
    """A trained model with its checkpoints and per-epoch history."""

    model: nn.Module
    checkpoints: list[Checkpoint]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cache: dict = field(default_factory=dict, repr=False)  # derived quantities detectors share (``shared``)
    records: dict = field(default_factory=dict, repr=False)  # a recording hook's (``records()``)

    def shared(self, key: tuple, data, compute, fits=None):
        """``compute()`` for ``data`` under ``key``, computed once per run and data object (again when
        ``fits(value)`` says the stored value does not serve this call): detectors of one trial share
        features and gradient passes. The entry remembers its data object by identity (a weak reference),
        so another dataset that happens to reuse a freed object's ``id`` never reads it."""
        entry = self.cache.get((key, id(data)))
        if entry is None or entry[0]() is not data or (fits is not None and not fits(entry[1])):
            entry = (weakref.ref(data), compute())
            self.cache[(key, id(data))] = entry
        return entry[1]


class TrainHook:
    """How a training-time defense changes :func:`train`: which rows each epoch trains on, how a batch's
    inputs look and how its loss is weighed. The default hook changes nothing. In the transfer setting
    (:func:`train_head`) the hook sees the frozen features, unless it reads images (``reads_images``: it
    transforms them, or runs another model on them): then the head trains through the frozen body, one
    forward pass of it per batch."""

    reads_images: bool = False

    def begin(self, config: TrainConfig) -> None:
        """Called once before the first epoch with the schedule (e.g. to place stages by epoch)."""

    def rows(self, epoch: int, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Indices of the rows ``epoch`` (1-based) trains on, decided before the epoch from the model so far
        and the training inputs ``x`` (features in the transfer setting) and labels ``y``; None: every row."""
        return None

    def inputs(self, xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch's inputs as the model sees them (after augmentation)."""
        return xb

    def loss(
        self, logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, model: nn.Module
    ) -> torch.Tensor:
        """The batch's training loss (mean cross-entropy by default; a reweighting or semi-supervised defense
        changes it, ``model`` being the model in training)."""
        return F.cross_entropy(logits, yb)

    def before_step(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, rows: torch.Tensor) -> None:
        """Called before each optimiser step with the batch as the model sees it and its row indices."""

    def after_step(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, rows: torch.Tensor) -> None:
        """Called after each optimiser step (a recording hook measures what the step changed)."""

    def records(self) -> dict:
        """What the hook recorded during training; the run keeps it as ``TrainRun.records``."""
        return {}


def augment_batch(x: torch.Tensor, generator: torch.Generator, hflip: bool = True) -> torch.Tensor:
    """Random crop after zero padding by H/8 (at least 1 pixel) and random horizontal flip, batched."""
    n, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = dx[:, None] + torch.arange(w, device=x.device)
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    cols = cols[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config`` names, over ``model``'s parameters, at its initial learning rate."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def check_training(
    where: str, model: nn.Module, data: Dataset, config, seed, eval_data: Dataset | None
) -> TrainConfig:
    """The checks of :func:`train` and :func:`train_head`: the config, the data, the model against the data
    (input shape, one output per class), the evaluation data and the seed. Returns the config."""
    if config is None:
        config = TrainConfig()
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"{where}: config must be a TrainConfig (or None), got {type(config).__name__}")
    check_dataset(data, where, "data")
    check_model_fits(model, data, where, "model", "data")
    if eval_data is not None:
        check_dataset(eval_data, where, "eval_data", min_rows=0)
        check_same_space(data, eval_data, where, "data", "eval_data")
    check_seed(seed, f"{where}: seed")
    resolve_device(config.device)
    return config


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    eval_data: Dataset | None = None,
    progress: bool = False,
    desc: str = "train",
    hook: TrainHook | None = None,
) -> TrainRun:
    """Train ``model`` in place on ``data`` and return the run with its checkpoints and history; a ``hook``
    (a training-time defense) chooses each epoch's rows and transforms the batches."""
    config = check_training("train", model, data, config, seed, eval_data)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("train: model has no trainable parameter (every requires_grad is off)")
    device = resolve_device(config.device)
    model.to(device)
    x, y = data.x.to(device), data.y.to(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, config)
    checkpoints: list[Checkpoint] = []
    history: list[dict] = []
    start = time.perf_counter()
    epochs = range(1, config.epochs + 1)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=desc, unit="epoch", leave=False)
    if hook is not None:
        hook.begin(config)
    for epoch in epochs:
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        active = hook.rows(epoch, model, x, y) if hook is not None else None
        model.train()
        if active is None:
            order = torch.randperm(len(data), generator=generator).to(device)
        else:
            active = active.to(device)
            order = active[torch.randperm(len(active), generator=generator).to(device)]
        total_loss, correct = 0.0, 0
        for batch in order.split(config.batch_size):
            xb, yb = x[batch], y[batch]
            if config.augment:
                xb = augment_batch(xb, generator, config.hflip)
            if hook is not None:
                xb = hook.inputs(xb, generator)
                hook.before_step(model, xb, yb, batch)
            logits = model(xb)
            loss = hook.loss(logits, xb, yb, model) if hook is not None else F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if hook is not None:
                hook.after_step(model, xb, yb, batch)
            total_loss += loss.item() * len(batch)
            correct += (logits.argmax(1) == yb).sum().item()
        if not torch.isfinite(torch.tensor(total_loss)):
            raise ConfigError(
                f"training diverged at epoch {epoch} (loss is not finite): lower the learning rate"
            )
        seen = max(1, len(order))
        record = {"epoch": epoch, "lr": lr, "loss": total_loss / seen, "train_accuracy": correct / seen}
        if active is not None:
            record["rows"] = len(order)
        if eval_data is not None:
            record["test_accuracy"] = accuracy(model, eval_data)
        history.append(record)
        if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            checkpoints.append(Checkpoint(epoch=epoch, lr=lr, state=state))
        if progress:
            epochs.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_accuracy']:.3f}")
    model.eval()
    return TrainRun(
        model=model,
        checkpoints=checkpoints,
        history=history,
        seconds=time.perf_counter() - start,
        records=hook.records() if hook is not None else {},
    )


def train_head(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    eval_data: Dataset | None = None,
    progress: bool = False,
    desc: str = "train head",
    hook: TrainHook | None = None,
) -> TrainRun:
    """Transfer setting: a copy of ``model`` whose feature extractor stays frozen and whose head is
    re-initialised (seeded) and trained on ``data`` with ``config`` (no augmentation: the features of each
    row are computed once). The copy's frozen parameters have ``requires_grad`` off; its checkpoints hold
    the whole model. ``model`` needs ``features(x)`` and a linear ``head`` (every built model has them).
    """
    if not (
        callable(getattr(model, "features", None)) and isinstance(getattr(model, "head", None), nn.Linear)
    ):
        raise ConfigError("train_head: model needs features(x) and a linear head")
    config = check_training("train_head", model, data, config, seed, eval_data)
    config = config.model_copy(update={"augment": False})
    victim = copy.deepcopy(model).cpu().eval()
    for p in victim.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        victim.head.reset_parameters()
    victim.head.requires_grad_(True)

    if hook is not None and hook.reads_images:  # the hook works on images: the body runs per batch
        run = train(
            _FrozenBody(victim), data, config, seed=seed, eval_data=eval_data, progress=progress, desc=desc,
            hook=hook,
        )  # fmt: skip
        for ckpt in run.checkpoints:
            ckpt.state = {k.removeprefix("model."): v for k, v in ckpt.state.items()}
        victim.cpu().eval()
        return TrainRun(victim, run.checkpoints, run.history, run.seconds, records=run.records)

    def as_features(d: Dataset) -> Dataset:
        with torch.no_grad():
            f = torch.cat([victim.features(xb) for xb in d.x.split(1024)]) if len(d) else d.x.flatten(1)
        return Dataset._trusted(f[:, :, None, None], d.y, d.classes, d.name)

    head = nn.Sequential(nn.Flatten(), victim.head)
    evals = as_features(eval_data) if eval_data is not None else None
    run = train(
        head, as_features(data), config, seed=seed, eval_data=evals, progress=progress, desc=desc, hook=hook
    )
    body = {k: v.detach().clone() for k, v in victim.state_dict().items() if not k.startswith("head.")}
    for ckpt in run.checkpoints:
        ckpt.state = {**body, **{f"head.{k.split('.', 1)[1]}": v for k, v in ckpt.state.items()}}
    victim.cpu().eval()
    return TrainRun(victim, run.checkpoints, run.history, run.seconds, records=run.records)


class _FrozenBody(nn.Module):
    """A transfer victim trained through its frozen body, which stays in eval mode while the head trains."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        self.model.head.train(mode)
        return self

    def forward(self, x):
        return self.model(x)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int, method: str = "forward") -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    fn = getattr(model, method)
    with torch.no_grad():
        parts = [fn(xb.to(device)).flatten(1).cpu() for xb in x.split(batch_size)]
        out = torch.cat(parts) if parts else None
    model.train(was_training)
    return out if out is not None else torch.empty(0)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for ``x``, on the CPU."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"predict: x must be a tensor of inputs, got {type(x).__name__}")
    check_model_accepts(model, x, "predict", "model", "x")
    return _logits(model, x, check_int(batch_size, "predict: batch_size", minimum=1))


def predict_features(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Penultimate features ``model.features(x)`` (in eval mode), on the CPU."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"predict_features: x must be a tensor of inputs, got {type(x).__name__}")
    if not callable(getattr(model, "features", None)):
        raise ConfigError("predict_features: the model has no `features` method (its penultimate layer)")
    check_model_accepts(model, x, "predict_features", "model", "x")
    return _logits(model, x, check_int(batch_size, "predict_features: batch_size", minimum=1), "features")


def accuracy(model: nn.Module, data: Dataset) -> float:
    """Fraction of ``data`` classified correctly (NaN for no rows)."""
    check_dataset(data, "accuracy", "data", min_rows=0)
    check_model_fits(model, data, "accuracy", "model", "data")
    if len(data) == 0:
        return float("nan")
    return (_logits(model, data.x, 1024).argmax(1) == data.y).float().mean().item()
