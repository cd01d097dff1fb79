"""Targeted clean-label attacks: the target, the poisons, the surrogates, and one crafting loop for all.

A targeted attack wants one test image ``x_t`` (true class ``y_t``) classified as ``y_adv`` by a victim
trained on the released set. Its poisons are training rows of class ``y_adv`` that keep their correct
labels; only their pixels change, by at most ``eps`` in L_inf *measured from the clean original*: the
watermark of the target and the smooth color shift (of at most ``color_eps``), for the attacks that use
them, are parts of the perturbation and count inside ``eps`` (the released poison is projected onto the
eps-ball around the clean image, then onto the image box). The attacks differ only in
the objective they minimise over the perturbations; like forest (Witches' Brew's code) the optimiser is
written once: :func:`craft_perturbations`, signed Adam over every poison of a trial at once, with the
step divided by 10 at 3/8, 5/8 and 7/8 of the steps, random restarts keeping the lowest final loss, and
optional differentiable augmentation (random crop + flip of the poisoned batch).

Target choice (a documented choice; the papers pick at random too): a uniformly drawn test row of
``target_class`` (any class when unset), and ``adversarial_class`` or a uniformly drawn other class; with
``adversarial_choice: runner_up`` the attacker draws the target among the test rows its surrogates classify
correctly and takes the class they rank second for it (their mean softmax): the easiest class to push a
correctly classified target into (without the restriction, a misclassified target's "runner-up" is often
the class it already gets, and success would be free).
Poisons: uniformly drawn training rows of the adversarial class (Witches' Brew, MetaPoison, Poison Frogs'
bases). One target per trial: success over trials is the success rate over targets.

Surrogates: with a ``victim`` (the clean model the victim starts from: the transfer setting's frozen
feature extractor, or white-box) the attack crafts on it, and only its parameters with
``requires_grad`` count as the victim's trainable ones; otherwise it trains ``ensemble`` models of
architecture ``model`` on the clean set for staggered numbers of epochs (MetaPoison's staggered ensemble;
one model when ``ensemble`` is 1), seeded from the trial's generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from poisonlab.attacks.base import SurrogateAttack
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.models import build_model
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.training import augment_batch, predict, train


def trainable(model: nn.Module) -> list[torch.Tensor]:
    """The parameters a victim would train (``requires_grad``), in a fixed order."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the surrogate model has no trainable parameter")
    return params


def recolor(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Smooth color perturbation: ``x + s_c(x_c)`` with ``s_c`` piecewise linear in the intensity.

    ``shift`` (N, C, G) holds each image's per-channel shift at G equally spaced intensities; a factorised,
    per-channel version of MetaPoison's ReColor (a shift field over color space, smooth by construction).
    """
    n, c = x.shape[:2]
    knots = shift.shape[-1]
    pos = x.clamp(0, 1).reshape(n, c, -1) * (knots - 1)
    low = pos.detach().floor().clamp(0, knots - 2).long()
    frac = pos - low
    left, right = shift.gather(2, low), shift.gather(2, low + 1)
    return x + (left * (1 - frac) + right * frac).reshape(x.shape)


@dataclass
class Setup:
    """One trial's target (its test row ``index``), adversarial label, poison rows and surrogates."""

    x_t: torch.Tensor
    y_t: int
    y_adv: int
    idx: torch.Tensor
    models: list[nn.Module]
    index: int


@dataclass
class Crafted:
    """The best restart's perturbation (image units), color shift and per-step losses."""

    delta: torch.Tensor
    color: torch.Tensor | None
    losses: list[float] = field(default_factory=list)
    restart_losses: list[float] = field(default_factory=list)


def project(x: torch.Tensor, clean: torch.Tensor | None, eps: float | None) -> torch.Tensor:
    """``x`` moved onto the L_inf ball of radius ``eps`` around ``clean`` (if given), then into [0, 1]."""
    if clean is not None and eps is not None:
        x = clean + (x - clean).clamp(-eps, eps)
    return x.clamp(0, 1)


def apply_perturbation(
    base: torch.Tensor,
    delta: torch.Tensor,
    color: torch.Tensor | None = None,
    *,
    clean: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """The released poisons: recolored (watermarked) base plus delta, projected onto the eps-ball around
    the ``clean`` originals (the whole perturbation counts in the budget) and clipped to the image box."""
    x = recolor(base, color) if color is not None else base
    return project(x + delta, clean, eps)


def craft_perturbations(
    base: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float,
    steps: int,
    lr: float,
    generator: torch.Generator,
    restarts: int = 1,
    color_eps: float = 0.0,
    color_knots: int = 8,
    augment: bool = False,
    hflip: bool = True,
    refresh: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
    refresh_every: int = 0,
    clean: torch.Tensor | None = None,
) -> Crafted:
    """Minimise ``objective(poisons)`` over ||delta||_inf <= eps (and |color shift| <= color_eps); with
    ``clean`` (the originals of a watermarked ``base``), every poison is projected onto the eps-ball around
    its clean original, so watermark, color shift and delta together stay within eps.

    Signed Adam on delta / eps (Geiping et al. 2021): the gradient's sign feeds Adam, whose step ``lr`` is
    in units of eps, divided by 10 at 3/8, 5/8 and 7/8 of ``steps``; each restart starts from a uniform
    draw in the ball and the restart with the lowest last loss wins. All poisons move together. With
    ``refresh``, every ``refresh_every`` steps the objective is rebuilt from the current poisons (surrogates
    retrained on the poisoned set, as Sleeper Agent does); each restart starts from the first objective.
    """
    first_objective = objective
    best: Crafted | None = None
    best_loss = float("inf")
    restart_losses = []
    for _ in range(restarts):
        objective = first_objective
        unit = (torch.rand(base.shape, generator=generator, device="cpu") * 2 - 1).to(base)
        unit.requires_grad_(True)
        params = [unit]
        color = None
        if color_eps > 0:
            color = torch.zeros(*base.shape[:2], color_knots, device=base.device, requires_grad=True)
            params.append(color)
        opt = torch.optim.Adam(params, lr=lr)
        marks = sorted({max(1, int(steps * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, marks, gamma=0.1)
        losses = []
        for step in range(steps):
            shift = color_eps * color if color is not None else None
            if refresh is not None and refresh_every and step and step % refresh_every == 0:
                current = apply_perturbation(base, eps * unit, shift, clean=clean, eps=eps)
                objective = refresh(current.detach())
            x = apply_perturbation(base, eps * unit, shift, clean=clean, eps=eps)
            if augment:
                x = augment_batch(x, generator, hflip)
            loss = objective(x)
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads):
                p.grad = g.sign()
            opt.step()
            sched.step()
            with torch.no_grad():
                for p in params:
                    p.clamp_(-1, 1)
            losses.append(float(loss.detach()))
        restart_losses.append(losses[-1])
        if losses[-1] < best_loss:
            best_loss = losses[-1]
            shift = color_eps * color.detach() if color is not None else None
            best = Crafted(eps * unit.detach(), shift, losses)
    assert best is not None
    best.restart_losses = restart_losses
    return best


class TargetedAttack(SurrogateAttack):
    """Base of the targeted clean-label attacks: target choice, poison budget, surrogates, success."""

    success_key: ClassVar[str | None] = "success"

    model: str = Field("cnn", description="surrogate architecture (trained on the clean data if no victim)")
    target_class: int | None = Field(None, ge=0, description="class of the target image; any if unset")
    adversarial_class: int | None = Field(
        None, ge=0, description="label the attacker wants for the target; a random other class if unset"
    )
    target_index: int | None = Field(
        None, ge=0, description="row of the test set used as target; drawn at random if unset"
    )
    fraction: float | None = Field(
        None, gt=0, le=1, description="poisons as a share of the training set (1% if no count either)"
    )
    count: int | None = Field(None, ge=1, description="number of poisons (instead of a fraction)")
    adversarial_choice: Literal["random", "runner_up"] = Field(
        "random", description="adversarial class if unset: a random other class, or the surrogates' runner-up"
    )
    ensemble: int = Field(1, ge=1, description="surrogates trained for staggered epochs (without victim)")

    default_fraction: ClassVar[float] = 0.01

    @model_validator(mode="after")
    def _check_targeted(self):
        if self.fraction is not None and self.count is not None:
            raise ValueError("give at most one of fraction and count")
        if self.target_class is not None and self.target_class == self.adversarial_class:
            raise ValueError("target_class and adversarial_class must differ")
        self._check_model()
        return self

    # -- the target and the poisons -------------------------------------------------------------------
    def setup(self, train: Dataset, test: Dataset | None, victim: nn.Module | None, generator) -> Setup:
        """The target, adversarial label, poisons and surrogates of one trial, as documented in the module."""
        if self.adversarial_choice == "runner_up" and self.adversarial_class is None:
            self._check_classes(test, train.num_classes)
            models = self.surrogates(train, victim, generator)
            probs = torch.stack([predict(m, test.x).softmax(1) for m in models]).mean(0)
            index = self.target_row(test, generator, allowed=probs.argmax(1) == test.y.cpu())
            y_t = int(test.y[index])
            probs[index, y_t] = -1
            y_adv = int(probs[index].argmax())
            x_t = test.x[index : index + 1]
            return Setup(x_t, y_t, y_adv, self.choose_poisons(train, y_adv, generator), models, index)
        index, y_adv = self.choose_target(test, train.num_classes, generator)
        idx = self.choose_poisons(train, y_adv, generator)
        x_t, y_t = test.x[index : index + 1], int(test.y[index])
        return Setup(x_t, y_t, y_adv, idx, self.surrogates(train, victim, generator), index)

    def check_data(self, train: Dataset, test: Dataset | None = None) -> None:
        """The test set, the classes, the target row and the budget against the rows of every class the
        adversarial label may be (the smallest decides), before any surrogate is trained."""
        self._check_classes(test, train.num_classes)
        if self.target_index is not None:
            if self.target_index >= len(test):
                raise ConfigError(f"{self.name}: target_index {self.target_index} >= {len(test)} test rows")
            y_t = int(test.y[self.target_index])
            if y_t == self.adversarial_class:
                raise ConfigError(f"{self.name}: target row {self.target_index} is already of class {y_t}")
            if self.target_class is not None and y_t != self.target_class:
                raise ConfigError(
                    f"{self.name}: target row {self.target_index} is of class {y_t}, not target_class "
                    f"{self.target_class}"
                )
        elif self.target_class is not None and not bool((test.y == self.target_class).any()):
            raise ConfigError(f"{self.name}: no test row of class {self.target_class} to target")
        if self.adversarial_class is not None:
            candidates = [self.adversarial_class]
        else:
            excluded = int(test.y[self.target_index]) if self.target_index is not None else self.target_class
            candidates = [c for c in range(train.num_classes) if c != excluded]
        counts = train.class_counts()
        worst = min(candidates, key=lambda c: counts[c])
        n = self._budget(len(train))
        if n < 1 or n > counts[worst]:
            which = "the adversarial class" if len(candidates) == 1 else "the smallest candidate class"
            raise ConfigError(f"{self.name}: {n} poisons asked, {which} {worst} has {counts[worst]} rows")

    def _budget(self, rows: int) -> int:
        """Number of poisons: ``count``, else ``fraction`` (or ``default_fraction``) of ``rows``."""
        if self.count is not None:
            return self.count
        return round((self.fraction if self.fraction is not None else self.default_fraction) * rows)

    def _check_classes(self, test: Dataset | None, num_classes: int) -> None:
        if test is None or len(test) == 0:
            raise ConfigError(f"{self.name}: a targeted attack needs test data to draw its target from")
        for cls in (self.target_class, self.adversarial_class):
            if cls is not None and cls >= num_classes:
                raise ConfigError(f"{self.name}: class {cls} is not among the {num_classes} classes")

    def target_row(
        self, test: Dataset, generator: torch.Generator, allowed: torch.Tensor | None = None
    ) -> int:
        """``target_index``, or a uniformly drawn row of ``target_class`` (and of ``allowed``, a mask)."""
        if self.target_index is not None:
            if self.target_index >= len(test):
                raise ConfigError(f"{self.name}: target_index {self.target_index} >= {len(test)} test rows")
            return self.target_index
        ok = torch.ones(len(test), dtype=torch.bool) if allowed is None else allowed.cpu().clone()
        if self.target_class is not None:
            ok &= test.y == self.target_class
        if self.adversarial_class is not None:
            ok &= test.y != self.adversarial_class
        rows = ok.nonzero().flatten()
        if len(rows) == 0:
            what = "" if allowed is None else " that the surrogate classifies correctly"
            raise ConfigError(f"{self.name}: no test row of class {self.target_class}{what} to target")
        return int(rows[torch.randint(len(rows), (1,), generator=generator)])

    def choose_target(self, test: Dataset | None, num_classes: int, generator: torch.Generator):
        """(target row of ``test``, y_adv) drawn as documented in the module."""
        self._check_classes(test, num_classes)
        index = self.target_row(test, generator)
        y_t = int(test.y[index])
        if self.adversarial_class is not None:
            y_adv = self.adversarial_class
        else:
            y_adv = int(torch.randint(num_classes - 1, (1,), generator=generator))
            y_adv += int(y_adv >= y_t)
        if y_adv == y_t:
            raise ConfigError(f"{self.name}: target row {index} is already of class {y_adv}")
        return index, y_adv

    def choose_poisons(self, train: Dataset, y_adv: int, generator: torch.Generator) -> torch.Tensor:
        """Sorted indices of the poisons: uniformly drawn rows of the adversarial class."""
        rows = (train.y == y_adv).nonzero().flatten()
        n = self._budget(len(train))
        if n < 1 or n > len(rows):
            raise ConfigError(
                f"{self.name}: {n} poisons asked, the adversarial class {y_adv} has {len(rows)} rows"
            )
        return rows[torch.randperm(len(rows), generator=generator)[:n]].sort().values

    # -- the surrogates -------------------------------------------------------------------------------
    def surrogates(
        self, train: Dataset, victim: nn.Module | None, generator: torch.Generator
    ) -> list[nn.Module]:
        """The victim (frozen parts stay frozen), or ``ensemble`` clean models at staggered epochs."""
        if victim is not None:
            return [victim.eval()]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        models = []
        for i in range(self.ensemble):
            epochs = max(1, round(self.train.epochs * (i + 1) / self.ensemble))
            milestones = tuple(m for m in self.train.milestones if m <= epochs)
            config = self.train.model_copy(update={"epochs": epochs, "milestones": milestones})
            model = build_model(self.model, train.input_shape, train.num_classes, seed=seed + i)
            models.append(train_model(model, train, config, seed + i))
        return models

    # -- the record -----------------------------------------------------------------------------------
    def released(
        self, train: Dataset, idx: torch.Tensor, poisons: torch.Tensor, goal: AttackGoal
    ) -> PoisonedDataset:
        """The poisoned set, after checking the poisons lie in the image box."""
        if not (poisons.min() >= 0 and poisons.max() <= 1):
            raise AssertionError(f"{self.name}: poisons left the image box [0, 1]")
        return PoisonedDataset.from_rows(train, train.replace_rows(idx, poisons), idx, goal)

    def goal(self, setup: Setup, **info) -> AttackGoal:
        params = {**self.model_dump(mode="json"), **info}
        return AttackGoal(
            self.name, params, setup.x_t.cpu(), torch.tensor([setup.y_t]), adversarial_label=setup.y_adv,
            target_index=setup.index,
        )  # fmt: skip

    def evaluate(self, model: nn.Module, test: Dataset, goal: AttackGoal) -> dict[str, float]:
        """success (the target is classified as the adversarial label), its probability and log10 (whose
        mean over targets, victim minus twin, is the log of the geometric-mean gain), target_correct."""
        if goal.target_x is None:
            return {}
        log_probs = predict(model, goal.target_x).log_softmax(1)[0]
        pred = int(log_probs.argmax())
        return {
            "success": float(pred == goal.adversarial_label),
            "adversarial_probability": float(log_probs[goal.adversarial_label].exp()),
            "adversarial_log10_probability": float(log_probs[goal.adversarial_label]) / math.log(10),
            "target_correct": float(pred == int(goal.target_y[0])),
        }

    def report_record(self, poisoned: PoisonedDataset, goal_index: int, test: Dataset, count: int = 5):
        """The target, then a few poisons before and after crafting."""
        goal = poisoned.goals[goal_index]
        if goal.target_x is None:
            return None
        classes = poisoned.data.classes
        rows = poisoned.mask_of(goal_index).nonzero().flatten()[:count]
        target = goal.target_x.cpu()
        captions = [f"target {classes[int(goal.target_y[0])]} -> {classes[goal.adversarial_label]}"]
        captions += [f"#{int(i)} {classes[poisoned.data.y[i]]}" for i in rows]
        return {
            "before": torch.cat([target, poisoned.originals(rows).x]).numpy(),
            "after": torch.cat([target, poisoned.data.x[rows]]).numpy(),
            "captions": captions,
        }

    def figures(self, ident: str, record: dict) -> dict[str, bytes]:
        from poisonlab.report import purification_png

        title = f"{ident}: the target and poisons before / after crafting"
        return {title: purification_png(self.name, record["before"], record["after"], record["captions"])}


class PerturbationAttack(TargetedAttack):
    """A targeted attack whose poisons are ``watermark(base) + color shift + delta`` found by
    :func:`craft_perturbations`; subclasses give only the objective."""

    goal_metrics: ClassVar[tuple[str, ...]] = ("loss",)

    eps: float = Field(16 / 255, gt=0, le=1, description="L_inf bound of delta around the (watermarked) base")
    steps: int = Field(250, ge=1, description="signed-Adam steps per restart")
    lr: float = Field(0.1, gt=0, description="signed-Adam step, in units of eps")
    restarts: int = Field(1, ge=1, description="random restarts; the lowest final loss wins")
    augment: bool = Field(False, description="random crop (+ flip) of the poisons while crafting")
    hflip: bool = Field(True, description="flip when augmenting (turn off for digits)")
    color_eps: float = Field(0.0, ge=0, le=1, description="bound of the smooth color shift (0: none)")
    opacity: float = Field(0.0, ge=0, lt=1, description="watermark: base <- (1-o) base + o target (0: none)")
    retrain_every: int = Field(
        0,
        ge=0,
        description="retrain the surrogates on the poisoned set every k steps (no victim; 0: never)",
    )

    def objective(self, models, x_t, y_adv: int, base, labels, train, generator):
        """A function of the poisoned batch to minimise (built once per craft)."""
        raise NotImplementedError

    def _craft(self, train, *, generator, victim=None, test=None):
        setup = self.setup(train, test, victim, generator)
        idx, models, y_adv = setup.idx, setup.models, setup.y_adv
        device = next(models[0].parameters()).device  # craft where the surrogate lives (CPU or CUDA)
        x_t, clean = setup.x_t.to(device), train.x[idx].to(device)
        base = watermark(clean, x_t, self.opacity) if self.opacity else clean
        labels = train.y[idx].to(device)
        objective = self.objective(models, x_t, y_adv, base, labels, train, generator)

        def refresh(poisons: torch.Tensor):
            poisoned = train.replace_rows(idx, poisons)
            surrogates = self.surrogates(poisoned, None, generator)
            return self.objective(surrogates, x_t, y_adv, base, labels, poisoned, generator)

        result = craft_perturbations(
            base, objective, eps=self.eps, steps=self.steps, lr=self.lr, generator=generator,
            restarts=self.restarts, color_eps=self.color_eps, augment=self.augment, hflip=self.hflip,
            refresh=refresh if victim is None else None, refresh_every=self.retrain_every, clean=clean,
        )  # fmt: skip
        poisons = apply_perturbation(base, result.delta, result.color, clean=clean, eps=self.eps)
        assert_budget(poisons, clean, self.eps)
        losses = result.losses
        goal = self.goal(
            setup, loss={"first": losses[0], "last": losses[-1], "min": min(losses)},
            restart_losses=result.restart_losses,
        )  # fmt: skip
        return self.released(train, idx, poisons, goal)


def train_model(model: nn.Module, data: Dataset, config, seed: int) -> nn.Module:
    """Train a surrogate and return it in eval mode with every parameter trainable."""
    model = train(model, data, config, seed=seed).model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def watermark(base: torch.Tensor, target: torch.Tensor, opacity: float) -> torch.Tensor:
    """Blend the target into every base image: (1 - opacity) * base + opacity * target (Poison Frogs)."""
    return (1 - opacity) * base + opacity * target.expand_as(base)


def assert_budget(poisons: torch.Tensor, clean: torch.Tensor, eps: float) -> None:
    """The attack's promise: ||poison - clean original||_inf <= eps, every pixel in [0, 1]."""
    gap = float((poisons - clean).abs().max()) if len(clean) else 0.0
    if gap > eps + 1e-5:
        raise AssertionError(f"perturbation {gap:.4f} from the clean originals exceeds its budget {eps:.4f}")
    if len(poisons) and not (poisons.min() >= 0 and poisons.max() <= 1):
        raise AssertionError("poisons left the image box [0, 1]")


def adversarial_loss(model: nn.Module, x_t: torch.Tensor, y_adv: int) -> torch.Tensor:
    """Cross-entropy of the target under the adversarial label."""
    return F.cross_entropy(model(x_t), torch.tensor([y_adv], device=x_t.device))
