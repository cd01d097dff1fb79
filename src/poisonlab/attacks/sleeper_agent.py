"""Sleeper Agent (Souri et al. 2022; Mendata, Huang 2023, sec. 5.1): a clean-label, hidden-trigger backdoor.

The poisons are target-class training images that keep their labels; their bounded perturbations delta
(||delta||_inf <= eps) make the training gradient align with the gradient of the *adversarial* loss,
source-class images with the patch trigger labelled as the target:

    g_adv = grad_theta L(F(x_src + trigger), y_target)
    min_delta  1 - cos(grad_theta L(F(x_p + delta_p), y_p), g_adv)      (all parameters, one cosine)

The poisons are the target-class rows with the largest per-sample gradient norm at the surrogate; delta is
optimised by signed Adam with the learning rate divided by 10 at 3/8, 5/8 and 7/8 of the steps, and the
surrogate is retrained from scratch on the poisoned set every ``retrain_every`` steps. The training poisons
carry no trigger: it is only stamped at test time. As in the reference code (hsouri/Sleeper-Agent, built on
Geiping's): ``ensemble`` surrogates averaged in the loss, and ``augment_poisons`` (its ``paugment``, on by
default there, off here for backward compatibility of stored results) crops/flips the poisons at every step so
that they work under a victim's augmentation; train the surrogate (``augment``) and the victim with it too.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.func import functional_call, grad, vmap

from poisonlab.attacks.backdoor import BackdoorAttack, Corner, PatchTrigger
from poisonlab.attacks.gradients import matching_loss
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.models import MODELS, build_model
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import register
from poisonlab.training import TrainConfig, augment_batch, train


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Per-sample norm of the loss gradient over all parameters (torch.func vmap over grad), eval mode."""
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def loss(p, xi, yi):
        out = functional_call(model, {**buffers, **p}, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    norms = []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        g = per_sample(params, xb, yb)
        norms.append(torch.sqrt(sum(v.reshape(len(xb), -1).pow(2).sum(1) for v in g.values())))
    return torch.cat(norms)


@register("attack", "sleeper_agent")
class SleeperAgent(PatchTrigger, BackdoorAttack):
    """Sleeper Agent (Souri 2022): gradient matching toward patched source images, clean labels."""

    goal_metrics: ClassVar[tuple[str, ...]] = ("matching_loss",)

    source: int | None = Field(
        1, ge=0, description="class whose triggered images should become `target`; None: every other class"
    )
    fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="poisons as a share of the whole training set, from the target class "
        "(1% when neither fraction nor count is set)",
    )
    count: int | None = Field(None, ge=1, description="number of poisons (instead of a fraction)")
    eps: float = Field(16 / 255, gt=0, le=1, description="L_inf bound of the perturbations")
    patch_size: int = Field(8, ge=1, description="side of the square trigger patch in pixels")
    position: Corner | tuple[int, int] = Field(
        "random", description="where the patch goes on source images: a corner, 'random', or [top, left]"
    )
    pattern: Literal["random", "checkerboard", "white"] = Field("random", description="patch content")
    pattern_seed: int = Field(0, ge=0, description="seed of the 'random' patch")
    steps: int = Field(250, ge=1, description="optimisation steps on the perturbations")
    lr: float = Field(0.1, gt=0, description="signed-Adam step size, in units of eps")
    retrain_every: int = Field(
        50, ge=0, description="retrain the surrogate from scratch every k steps; 0: never"
    )
    num_sources: int | None = Field(
        None, ge=1, description="source images for g_adv; all of the class if unset"
    )
    surrogate: str = Field("cnn", description="surrogate model architecture")
    surrogate_epochs: int = Field(20, ge=1)
    surrogate_lr: float = Field(0.05, gt=0)
    surrogate_batch_size: int = Field(64, ge=1)
    augment: bool = Field(False, description="train the surrogate with random crop + flip")
    augment_poisons: bool = Field(
        False,
        description="differentiable random crop (+ flip if hflip) of the poisons at every step, as the "
        "reference code's paugment (its default)",
    )
    hflip: bool = Field(True, description="flip horizontally when augmenting (turn off for digits)")
    ensemble: int = Field(
        1, ge=1, description="surrogates crafted on at once (seeded apart); the matching loss is their mean"
    )

    @model_validator(mode="after")
    def _check(self):
        if self.fraction is not None and self.count is not None:
            raise ValueError("give at most one of fraction and count")
        if self.source is not None and self.source == self.target:
            raise ValueError("source and target must differ")
        if self.surrogate not in MODELS:
            raise ValueError(f"unknown surrogate model {self.surrogate!r}; known: {', '.join(MODELS)}")
        return self

    def source_mask(self, y: torch.Tensor) -> torch.Tensor:
        return y == self.source if self.source is not None else y != self.target

    def _surrogate(self, data: Dataset, seed: int) -> nn.Module:
        model = build_model(self.surrogate, data.input_shape, data.num_classes, seed=seed)
        config = TrainConfig(
            epochs=self.surrogate_epochs,
            lr=self.surrogate_lr,
            batch_size=self.surrogate_batch_size,
            milestones=(max(1, int(0.75 * self.surrogate_epochs)),),
            augment=self.augment,
            hflip=self.hflip,
            checkpoint_every=self.surrogate_epochs,
            device="cpu",
        )
        model = train(model, data, config, seed=seed).model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def check_data(self, train: Dataset, test: Dataset | None = None) -> None:
        self._rows(train)
        self._trigger(train.input_shape)
        self._place(1, train.input_shape, torch.Generator().manual_seed(0))

    def _rows(self, train: Dataset) -> tuple[torch.Tensor, int, torch.Tensor]:
        """(target-class rows, number of poisons, source rows), checked against the data."""
        self._check_target(train)
        if self.source is not None and self.source >= train.num_classes:
            raise ConfigError(
                f"sleeper_agent: source class {self.source} is not in {train.name or 'the data'}"
            )
        target_rows = (train.y == self.target).nonzero().flatten()
        n = self.count if self.count is not None else round((self.fraction or 0.01) * len(train))
        if n < 1 or n > len(target_rows):
            raise ConfigError(
                f"sleeper_agent: {n} poisons asked, the target class has {len(target_rows)} rows"
            )
        sources = self.source_mask(train.y).nonzero().flatten()
        if len(sources) == 0:
            which = f"class {self.source}" if self.source is not None else "the classes other than the target"
            raise ConfigError(f"sleeper_agent: no training row of {which} to trigger (source)")
        return target_rows, n, sources

    def _craft(self, train: Dataset, *, generator: torch.Generator, victim=None, test=None):
        target_rows, n, sources = self._rows(train)
        if self.num_sources is not None:
            sources = sources[torch.randperm(len(sources), generator=generator)[: self.num_sources]]
        trigger = self._trigger(train.input_shape)
        goal = AttackGoal(self.name, self.model_dump(), adversarial_label=self.target, trigger=trigger)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))

        models = [self._surrogate(train, seed + k * 7919) for k in range(self.ensemble)]
        norms = torch.stack([gradient_norms(m, train.x[target_rows], train.y[target_rows]) for m in models])
        idx = target_rows[norms.mean(0).argsort(descending=True)[:n]].sort().values
        base, labels = train.x[idx], train.y[idx]
        delta = torch.zeros_like(base, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        milestones = [int(self.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
        x_src = train.x[sources]
        y_adv = torch.full((len(sources),), self.target, dtype=torch.int64)
        targets: list | None = None
        losses: list[float] = []
        for step in range(self.steps):
            if self.retrain_every and step and step % self.retrain_every == 0:
                released = self._released(train, idx, base, delta)
                models = [self._surrogate(released, seed + step + k * 7919) for k in range(self.ensemble)]
                targets = None
            if targets is None:  # a fresh draw of trigger places for each surrogate
                targets = [
                    self._adversarial_gradient(m, self.apply_trigger(x_src, goal, generator), y_adv)
                    for m in models
                ]
            x = (base + self.eps * delta).clamp(0, 1)
            if self.augment_poisons:
                x = augment_batch(x, generator, self.hflip)
            loss = 0.0
            for m, (target_grad, target_norm) in zip(models, targets):
                params = [p for p in m.parameters() if p.requires_grad]
                grads = torch.autograd.grad(F.cross_entropy(m(x), labels), params, create_graph=True)
                loss = loss + matching_loss(grads, target_grad, target_norm) / len(models)
            (delta.grad,) = torch.autograd.grad(loss, delta)
            delta.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                delta.clamp_(-1, 1)
            losses.append(float(loss.detach()))
        goal.params["matching_loss"] = {"first": losses[0], "last": losses[-1], "min": min(losses)}
        return PoisonedDataset.from_rows(train, self._released(train, idx, base, delta), idx, goal)

    @staticmethod
    def _adversarial_gradient(model: nn.Module, x_adv: torch.Tensor, y_adv: torch.Tensor):
        """(g_adv, ||g_adv||) of one surrogate: the loss of the triggered sources labelled as the target."""
        params = [p for p in model.parameters() if p.requires_grad]
        g = tuple(t.detach() for t in torch.autograd.grad(F.cross_entropy(model(x_adv), y_adv), params))
        return g, torch.sqrt(sum(t.pow(2).sum() for t in g))

    def _released(self, train: Dataset, idx, base, delta) -> Dataset:
        return train.replace_rows(idx, (base + self.eps * delta.detach()).clamp(0, 1))
