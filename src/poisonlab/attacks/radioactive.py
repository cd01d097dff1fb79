"""Radioactive data (Sablayrolles et al. 2020; seed 003, section 6): a data owner's marking, not an attack.

The owner trains (or is given) a marking network phi, draws one random unit carrier u_c per class in its
feature space and perturbs a share of her training images x of class c into x~ = x + delta minimising

    L(x~) = -(phi(A(x~)) - phi(x)) . u_c + lambda_ft ||phi(A(x~)) - phi(x)|| + lambda_img ||x~ - x||^2

with A a random crop (+ flip) and ||delta||_inf <= eps, x~ in [0, 1], labels unchanged. Defaults follow the
authors' ``make_data_radioactive.py`` where they transfer: eps 10/255, 300 steps with the learning rate / 10
after a third and two thirds of them, lambda_ft 0.5, lambda_img 0.05 (on ImageNet-normalised pixels, std
~0.226: 0.05 / 0.051 on our [0, 1] pixels), pixels rounded to 1/255 every 10 steps. Documented choice: the
original's SGD step (0.1, momentum 0.9, on normalised pixels) does not transfer to our models' gradient
scale (measured on digits: 100 steps moved the features along the carrier by 0.07 against a spread of 0.56),
so the step is Adam's, ``lr`` x eps. Without a victim the owner trains her own marking network (``model``,
``train``, her own seed); in the transfer setting the victim's frozen extractor is the marking network (the
original's same-network case).

Measured (digits, transfer, half the rows marked, 4 seeds): with the original's defaults the victim's
p-values equal its clean twin's; at 32/255 without the two penalties and the augmentation, 3 of 4 victims
are detected (p 0.007-0.13) and no twin. The seed notes that radioactive data is weak with few classes.
``evaluate`` runs :func:`poisonlab.tracing.trace` on a model: its combined p-value and ``detected``
(p < alpha); the runner adds the clean twin's (the test's false positive) and the net value.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from poisonlab.attacks.base import BudgetedAttack, SurrogateAttack, poison_count
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import register
from poisonlab.training import augment_batch

NORMALISED_STD2 = 0.226**2  # ImageNet pixel std squared: converts the original's step and image weight


def draw_carriers(num_classes: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """One random unit vector per class (uniform on the sphere)."""
    u = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    return (u / u.norm(dim=1, keepdim=True)).float()


def stratified_rows(labels: torch.Tensor, n: int, num_classes: int, generator: torch.Generator):
    """``n`` random rows spread over the classes in proportion to their sizes (sorted indices)."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    quota = torch.floor(counts * n / counts.sum()).long()
    rest = n - int(quota.sum())
    if rest > 0:  # the largest remainders get one more
        frac = counts * n / counts.sum() - quota
        quota[frac.argsort(descending=True)[:rest]] += 1
    order = torch.randperm(len(labels), generator=generator)
    by_class = order[torch.argsort(labels[order], stable=True)]
    sorted_labels = labels[by_class]
    first = torch.searchsorted(sorted_labels, sorted_labels)
    rank = torch.arange(len(labels)) - first
    return by_class[rank < quota[sorted_labels]].sort().values


def mark_images(
    marker: nn.Module,
    x: torch.Tensor,
    carriers: torch.Tensor,
    *,
    eps: float,
    steps: int,
    lr: float,
    feature_weight: float,
    image_weight: float,
    augment: bool,
    hflip: bool,
    generator: torch.Generator,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """The marked images (batched over rows): ``carriers`` holds each row's carrier (N x d)."""
    was_training = marker.training
    marker.eval()
    device = next(marker.parameters()).device
    out = []
    milestones = {steps // 3, 2 * steps // 3}
    batches = zip(x.split(batch_size), carriers.split(batch_size))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="marking", unit="batch", total=-(-len(x) // batch_size), leave=False)
    for x0, u in batches:
        x0, u = x0.to(device), u.to(device)
        with torch.no_grad():
            ft0 = marker.features(x0).flatten(1)
        xm = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([xm], lr=lr * eps)
        for it in range(steps):
            if it in milestones:
                for group in opt.param_groups:
                    group["lr"] /= 10
            seen = augment_batch(xm, generator, hflip) if augment else xm
            diff = marker.features(seen).flatten(1) - ft0
            loss = -(diff * u).sum() + feature_weight * diff.norm(dim=1).sum()
            loss = loss + image_weight * ((xm - x0) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                xm.copy_(torch.minimum(torch.maximum(xm, x0 - eps), x0 + eps).clamp(0, 1))
                if it % 10 == 0 or it == steps - 1:
                    xm.copy_(torch.minimum(torch.maximum((xm * 255).round() / 255, x0 - eps), x0 + eps))
        out.append(xm.detach().cpu())
    marker.train(was_training)
    return torch.cat(out) if out else x[:0].clone()


@register("attack", "radioactive_data")
class RadioactiveData(SurrogateAttack, BudgetedAttack):
    """Radioactive data (Sablayrolles 2020): mark images so that models trained on them can be traced."""

    default_fraction: ClassVar[float] = 0.1
    success_key: ClassVar[str | None] = "detected"
    goal_metrics: ClassVar[tuple[str, ...]] = ("feature_shift",)

    model: str = Field("cnn", description="marking network (trained on the owner's clean rows if no victim)")
    eps: float = Field(10 / 255, gt=0, le=1, description="L_inf bound of the mark (the original: 10/255)")
    steps: int = Field(300, ge=1, description="optimisation steps per image (the original's 300)")
    lr: float = Field(0.1, gt=0, description="Adam step, in units of eps")
    feature_weight: float = Field(0.5, ge=0, description="lambda_ft: keep the features near the original")
    image_weight: float = Field(0.05 / NORMALISED_STD2, ge=0, description="lambda_img on [0, 1] pixels")
    augment: bool = Field(True, description="random crop (and flip) while marking, for robustness")
    hflip: bool = Field(True, description="flip when augmenting (turn off for digits)")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the test")
    align_rows: int = Field(2000, ge=2, description="clean test images used to align the feature spaces")
    batch_size: int = Field(256, ge=1, description="images marked at once")

    def mark(self, train: Dataset, marker: nn.Module, generator: torch.Generator, progress: bool = False):
        """(marked rows, carriers K x d, their marked images, mean feature shift along the carriers): the
        marking of ``train`` with the network ``marker`` (the owner's, or the victim's frozen extractor)."""
        if not callable(getattr(marker, "features", None)):
            raise ConfigError("radioactive_data: the marking network needs a `features` method")
        n = poison_count(len(train), self.budget_fraction, self.count, self.name)
        idx = stratified_rows(train.y, n, train.num_classes, generator)
        with torch.no_grad():
            dim = marker.features(train.x[:1].to(next(marker.parameters()).device)).flatten(1).shape[1]
        carriers = draw_carriers(train.num_classes, dim, generator)
        marked = mark_images(
            marker, train.x[idx], carriers[train.y[idx]], eps=self.eps, steps=self.steps, lr=self.lr,
            feature_weight=self.feature_weight, image_weight=self.image_weight, augment=self.augment,
            hflip=self.hflip, generator=generator, batch_size=self.batch_size, progress=progress,
        )  # fmt: skip
        with torch.no_grad():
            device = next(marker.parameters()).device
            shift = (marker.features(marked.to(device)) - marker.features(train.x[idx].to(device))).flatten(1)
            along = float((shift.cpu() * carriers[train.y[idx]]).sum(1).mean())
        return idx, carriers, marked, along

    def _craft(self, train: Dataset, *, generator: torch.Generator, victim=None, test=None):
        marker = self._clean_model(train, victim, generator)
        idx, carriers, marked, along = self.mark(train, marker, generator)
        goal = AttackGoal(
            self.name, {**self.model_dump(), "carriers": carriers, "marker": marker, "feature_shift": along}
        )
        return PoisonedDataset.from_rows(train, train.replace_rows(idx, marked), idx, goal)

    def evaluate(self, model: nn.Module, test: Dataset, goal: AttackGoal) -> dict[str, float]:
        """The tracing test of ``model``: combined p-value, its log10, ``detected`` (p < alpha), the mean
        cosine between the model's class rows (aligned on clean test images) and the carriers, and the
        alignment's relative squared residual (near 0: the model's features are a linear map of the
        marker's; near 1: the test has little to work with)."""
        from poisonlab.tracing import trace

        marker, carriers = goal.params["marker"], goal.params["carriers"]
        result = trace(model, marker, carriers, test.x[: self.align_rows], self.alpha)
        return {
            "p_value": result.p_value,
            "log10_p": result.log10_p,
            "detected": float(result.detected),
            "mean_cosine": float(result.cosines.mean()),
            "alignment_residual": result.alignment_residual,
        }
