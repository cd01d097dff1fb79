"""ASD (Gao et al. 2023, "Backdoor Defense via Adaptive Splitting"; one of Mendata's prevention baselines,
Huang 2023, Table 6): before every epoch, split the training rows into a clean pool, trained on with its
labels, and a polluted pool, trained on without labels (MixMatch semi-supervised learning), so that a poison
whose label is wrong never teaches the model its trigger.

The split, from the model as it stands (eval mode), with the symmetric cross-entropy
SCE = alpha * CE + beta * RCE, RCE = -log(1e-4) * (1 - p_y) (alpha 0.1, beta 1):

1. class-aware (the first ``class_aware_until`` of the epochs; the authors' 60 of 120): the seed rows plus,
   per class, the ``grow`` * floor(epoch / ``grow_every``) rows of lowest SCE (authors: 10 more every 5);
2. class-agnostic (until ``agnostic_until``; 90 of 120): the ``clean_share`` (1/2) of all rows of lowest SCE;
3. meta-split (the rest): a copy of the model trains one epoch on every row with plain CE and Adam
   (``meta_lr`` 0.015); the clean pool is the ``clean_share`` of rows whose SCE that epoch lowered least (a
   poison, easy to learn, drops most). The authors update only the last two ResNet stages and the head of the
   copy; here the whole copy trains.

Each epoch then trains on the clean pool resampled to as many rows as the data has (the authors run a fixed
1,024 batches per epoch whatever the pool's size), every labelled batch paired with an unlabelled batch of the
polluted pool: MixMatch (Berthelot 2019) with two augmented views, sharpening T 0.5, MixUp alpha 0.75
(lambda = max(lambda, 1 - lambda)), loss = soft cross-entropy on the mixed labelled rows + lambda_u * MSE on
the mixed unlabelled rows, lambda_u 15 ramped up linearly over the training (no EMA, as the authors). The
optimiser and schedule are the victim's (the authors: Adam 0.002, 120 epochs).

The seeds (``seeds_per_class`` clean rows per class, 10) are drawn from the true clean rows, as the authors'
code does: ASD's results read the poison mask and are marked as an oracle.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from poisonlab.data import Dataset
from poisonlab.defenses.training import Defended, TrainingDefense
from poisonlab.registry import register
from poisonlab.training import TrainConfig, TrainHook, augment_batch, train


def symmetric_ce(logits: torch.Tensor, y: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Per-row SCE (Wang 2019) with one-hot targets clamped at 1e-4: alpha * CE + beta * 9.21 * (1 - p_y)."""
    ce = F.cross_entropy(logits, y, reduction="none")
    p_y = logits.softmax(1).clamp(1e-7, 1.0).gather(1, y[:, None]).squeeze(1)
    return alpha * ce + beta * (-math.log(1e-4)) * (1 - p_y)


@torch.no_grad()
def _scores(model, x, y, alpha, beta) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([symmetric_ce(model(xb), yb, alpha, beta) for xb, yb in zip(x.split(512), y.split(512))])
    model.train(was)
    return out


class _Split(TrainHook):
    reads_images = True  # MixMatch augments images

    def __init__(self, defense: ASD, seeds: torch.Tensor, classes: tuple[str, ...], generator):
        self.d, self.seeds, self.classes, self.gen = defense, seeds, classes, generator
        self.rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
        self.history: list[dict] = []
        self.epoch = 1

    def begin(self, config: TrainConfig) -> None:
        self.epochs, self.hflip, self.augment = config.epochs, config.hflip, config.augment
        self.batch_size = config.batch_size

    def rows(self, epoch, model, x, y):
        d, n, done = self.d, len(y), epoch - 1
        self.epoch, self.x = epoch, x
        if done < d.class_aware_until * self.epochs:
            sce = _scores(model, x, y, d.sce_alpha, d.sce_beta).cpu()
            per_class = d.grow * (done // d.grow_every)
            sce[self.seeds] = -math.inf  # the seeds first in their class
            labels = y.cpu()
            clean = torch.zeros(n, dtype=torch.bool)
            seeds_per = torch.bincount(labels[self.seeds], minlength=len(self.classes))
            for c in labels.unique().tolist():  # a loop over classes, not rows
                rows = (labels == c).nonzero().flatten()
                clean[rows[torch.argsort(sce[rows])[: int(seeds_per[c]) + per_class]]] = True
            stage = "class-aware"
        elif done < d.agnostic_until * self.epochs:
            sce = _scores(model, x, y, d.sce_alpha, d.sce_beta).cpu()
            clean = torch.zeros(n, dtype=torch.bool)
            clean[torch.argsort(sce)[: max(1, int(d.clean_share * n))]] = True
            stage = "class-agnostic"
        else:
            virtual = copy.deepcopy(model)
            data = Dataset(x.cpu(), y.cpu(), self.classes)
            meta = TrainConfig(
                optimizer="adam", lr=d.meta_lr, weight_decay=0.0, epochs=1, batch_size=self.batch_size,
                augment=self.augment, hflip=self.hflip,
            )  # fmt: skip
            seed = int(torch.randint(2**31, (1,), generator=self.gen))
            train(virtual, data, meta, seed=seed)
            drop = _scores(model, x, y, d.sce_alpha, d.sce_beta) - _scores(
                virtual, x, y, d.sce_alpha, d.sce_beta
            )
            clean = torch.zeros(n, dtype=torch.bool)
            clean[torch.argsort(drop.cpu())[: max(1, int(d.clean_share * n))]] = True
            stage = "meta-split"
        self.clean, self.polluted = clean.nonzero().flatten(), (~clean).nonzero().flatten()
        self.history.append({"epoch": epoch, "stage": stage, "clean_pool": int(clean.sum())})
        pool = self.clean[torch.randint(len(self.clean), (n,), generator=self.gen)]
        return pool

    def loss(self, logits, xb, yb, model):
        if not len(self.polluted):
            return F.cross_entropy(logits, yb)
        d, b = self.d, len(yb)
        pick = self.polluted[torch.randint(len(self.polluted), (b,), generator=self.gen)]
        u = self.x[pick.to(self.x.device)]
        u1, u2 = (augment_batch(u, self.gen, self.hflip) for _ in range(2))
        with torch.no_grad():
            p = (model(u1).softmax(1) + model(u2).softmax(1)) / 2
            p = p ** (1 / d.temperature)
            q = p / p.sum(1, keepdim=True)
        inputs = torch.cat([xb, u1, u2])
        targets = torch.cat([F.one_hot(yb, logits.shape[1]).to(q), q, q])
        lam = float(self.rng.beta(d.mixup_alpha, d.mixup_alpha))
        lam = max(lam, 1 - lam)
        perm = torch.randperm(len(inputs), generator=self.gen).to(inputs.device)
        mixed = model(lam * inputs + (1 - lam) * inputs[perm])
        mixed_t = lam * targets + (1 - lam) * targets[perm]
        lx = -(mixed_t[:b] * F.log_softmax(mixed[:b], 1)).sum(1).mean()
        lu = ((mixed[b:].softmax(1) - mixed_t[b:]) ** 2).mean()
        ramp = min(1.0, (self.epoch - 1) / max(1, self.epochs))
        return lx + d.lambda_u * ramp * lu


@register("training_defense", "asd")
class ASD(TrainingDefense):
    """ASD (Gao 2023): split clean / polluted rows by loss each epoch, MixMatch on the polluted (oracle)."""

    seeds_per_class: int = Field(10, ge=1, description="clean seed rows per class (drawn from the truth)")
    class_aware_until: float = Field(0.5, ge=0, le=1, description="share of the epochs in stage 1 (60/120)")
    agnostic_until: float = Field(
        0.75, ge=0, le=1, description="end of stage 2 as a share of the epochs (90/120)"
    )
    grow: int = Field(10, ge=0, description="rows added per class to the clean pool every grow_every epochs")
    grow_every: int = Field(1, ge=1, description="epochs between growths (the authors' 5 of 120, scaled)")
    clean_share: float = Field(0.5, gt=0, lt=1, description="clean-pool share in stages 2 and 3")
    sce_alpha: float = Field(0.1, ge=0)
    sce_beta: float = Field(1.0, ge=0)
    meta_lr: float = Field(0.015, gt=0, description="Adam step of the meta-split's virtual epoch")
    temperature: float = Field(0.5, gt=0, description="MixMatch sharpening T")
    mixup_alpha: float = Field(0.75, gt=0, description="MixMatch Beta(alpha, alpha)")
    lambda_u: float = Field(15.0, ge=0, description="weight of the unlabelled loss (ramped up over training)")

    def oracle(self) -> str | None:
        return "ASD's seed rows are drawn from the true clean rows (as the authors' code does)"

    def _train(self, data, fit, *, victim, generator, truth) -> Defended:
        clean_rows = (~truth).nonzero().flatten()
        keys = torch.rand(len(clean_rows), generator=generator)
        order = clean_rows[torch.argsort(keys)]
        y = data.y[order]
        rank = torch.zeros(len(order), dtype=torch.int64)
        for c in y.unique().tolist():
            idx = (y == c).nonzero().flatten()
            rank[idx] = torch.arange(len(idx))
        seeds = order[rank < self.seeds_per_class].sort().values
        hook = _Split(self, seeds, data.classes, generator)
        run = fit(data, hook=hook, desc="asd")
        polluted = torch.zeros(len(data), dtype=torch.bool)  # the rows whose labels the last epoch ignored
        polluted[hook.polluted] = True
        return Defended(run, polluted, {"rounds": hook.history})
