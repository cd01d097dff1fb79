"""Fine-pruning (Liu, Dolan-Gavitt & Garg 2018; as run by Kashyap & Maheshwari 2024, sections 2-4).

Backdoor neurons tend to be dormant on clean inputs, so: rank the channels of the last convolutional layer
by their mean activation on clean data, prune (mask) the least active, and fine-tune on clean data with a
small learning rate so the remaining neurons unlearn the trigger. Kashyap & Maheshwari 2024's loop of
pruning steps:

    cutoff = clean_accuracy(model) - max_accuracy_drop
    while accuracy >= cutoff and pruned < max_pruned [and attack_success >= target_success]:
        prune `step` more of the channels (least active first), fine-tune, measure

and keep the last model whose clean accuracy is at or above the cutoff. The defender's rule (Liu et al.,
``stop: accuracy``, the default) stops on the clean-accuracy cutoff or the pruning fraction alone: a
defender has no trigger. The trigger-aware loop of Kashyap & Maheshwari 2024 also stops once the attack
success on triggered inputs is below ``target_success`` (``stop: oracle_success``): it reads the trigger, an
oracle, and its metrics say so. The attack success of each step is recorded in both for the report
(evaluation only).

The "last conv layer" is found generically: the last ``nn.Conv2d`` of ``model.body``; its output
channels are masked at the output of the top-level block that holds it (the conv itself in ``cnn``, the
last residual block in ``resnet18``, whose post-ReLU output is what a pruned channel must silence).

``rule: weight_threshold`` is seed 004's own pruning step instead (Kashyap & Maheshwari 2024, section 3 and
their code): in every convolutional layer,

    threshold = min + (max - min) x step        (over the layer's signed weights)

and the weights below it are set to zero, then the model is fine-tuned. As in their code the weights are
signed (so a step zeroes the most negative ones, not the smallest magnitudes), the threshold is recomputed
from the current weights at every step, and the zeroed weights stay trainable (no mask: fine-tuning may
move them again). Their code fine-tunes one epoch with Adam per step; ours uses the same fine-tuning for
both rules, so the two differ in the pruning step alone.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from poisonlab.checks import check_dataset
from poisonlab.data import Dataset
from poisonlab.defenses.base import Defense, Repair
from poisonlab.errors import ConfigError
from poisonlab.registry import register
from poisonlab.training import TrainConfig, accuracy, predict, train


class ChannelMask(nn.Module):
    """Multiplies a (N, C, H, W) activation by a fixed 0/1 mask over its C channels (a buffer)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mask", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.view(1, -1, *([1] * (x.ndim - 2)))


def mask_last_conv(model: nn.Module) -> ChannelMask:
    """Put a :class:`ChannelMask` after the top-level block of ``model.body`` holding its last Conv2d
    (in place; idempotent) and return it."""
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Sequential):
        raise ConfigError(
            "fine_pruning: model needs a convolutional body (cnn, resnet18): no Sequential `body`"
        )
    for child in body:
        if isinstance(child, nn.Sequential) and len(child) == 2 and isinstance(child[1], ChannelMask):
            return child[1]
    convs = [(name, m) for name, m in body.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("fine_pruning: model needs a convolutional body (cnn, resnet18): no Conv2d in it")
    name, conv = convs[-1]
    top = name.split(".")[0]
    mask = ChannelMask(conv.out_channels).to(conv.weight.device)
    setattr(body, top, nn.Sequential(getattr(body, top), mask))
    return mask


@torch.no_grad()
def channel_activations(
    model: nn.Module, mask: ChannelMask, x: torch.Tensor, batch_size: int = 512, reduce: str = "mean"
) -> torch.Tensor:
    """Mean (or, ``reduce="max"``, largest) post-ReLU activation of each masked channel on ``x``, before
    the mask is applied."""
    total = torch.zeros(len(mask.mask), dtype=torch.float64)
    seen = []

    def keep(module, inputs, output) -> None:  # per channel, over the batch and the spatial axes
        a = inputs[0].relu().transpose(0, 1).flatten(1)
        seen.append((a.amax(1) if reduce == "max" else a.mean(1)).double().cpu())

    handle = mask.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for xb in x.split(batch_size):
            model.features(xb.to(device))
            value = seen.pop()
            total = torch.maximum(total, value) if reduce == "max" else total + value * len(xb)
    finally:
        handle.remove()
        model.train(was_training)
    return total if reduce == "max" else total / max(1, len(x))


def attack_success(model: nn.Module, triggered: torch.Tensor | None, target: int | None) -> float:
    """Share of ``triggered`` inputs classified as ``target`` (NaN without a trigger)."""
    if triggered is None or target is None or len(triggered) == 0:
        return float("nan")
    return (predict(model, triggered).argmax(1) == target).float().mean().item()


class ChannelPruner:
    """Liu 2018: mask the last conv layer's channels least active on the defender's clean rows, a share
    ``step`` more at each call (re-ranked on the fine-tuned model when ``rerank``)."""

    unit = "channels"

    def __init__(self, model: nn.Module, x: torch.Tensor, defense: FinePruning):
        self.model, self.x, self.rerank = model, x, defense.rerank
        self.mask = mask_last_conv(model)
        self.total = len(self.mask.mask)
        self.per_step = max(1, round(defense.step * self.total))
        self.limit = min(self.total - 1, int(defense.max_pruned * self.total))
        self.pruned = 0
        self.ranking = channel_activations(model, self.mask, x).argsort()

    def exhausted(self) -> bool:
        return self.pruned >= self.limit

    def prune(self) -> tuple[int, float]:
        """(channels masked so far, their share)."""
        if self.rerank and self.pruned:
            act = channel_activations(self.model, self.mask, self.x)
            act[self.mask.mask == 0] = -1.0  # the pruned stay first
            self.ranking = act.argsort()
        self.pruned = min(self.limit, self.pruned + self.per_step)
        with torch.no_grad():
            self.mask.mask[self.ranking[: self.pruned]] = 0.0
        return self.pruned, self.pruned / self.total


class WeightThresholdPruner:
    """Seed 004 (Kashyap & Maheshwari 2024): in every Conv2d, zero the weights below
    min + (max - min) x ``step`` of the layer's current signed weights; at most max_pruned / step calls."""

    unit = "weights"

    def __init__(self, model: nn.Module, x: torch.Tensor, defense: FinePruning):
        self.convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not self.convs:
            raise ConfigError("fine_pruning: rule weight_threshold needs a model with a Conv2d layer")
        self.step = defense.step
        self.total = sum(c.weight.numel() for c in self.convs)
        self.limit = max(1, int(defense.max_pruned / defense.step + 1e-9))
        self.calls = 0

    def exhausted(self) -> bool:
        return self.calls >= self.limit

    @torch.no_grad()
    def prune(self) -> tuple[int, float]:
        """(conv weights at zero after this step, their share)."""
        self.calls += 1
        for conv in self.convs:
            w = conv.weight
            threshold = w.min() + (w.max() - w.min()) * self.step
            w[w < threshold] = 0.0
        zeros = sum(int((c.weight == 0).sum()) for c in self.convs)
        return zeros, zeros / self.total


@register("defense", "fine_pruning")
class FinePruning(Defense):
    """Fine-pruning (Liu 2018): prune the last conv layer's dormant channels in steps, fine-tune (or seed
    004's weight-threshold step, ``rule: weight_threshold``)."""

    step: float = Field(
        0.05, gt=0, le=1, description="share of the channels pruned per step (Kashyap & Maheshwari 2024: 5%)"
    )
    max_accuracy_drop: float = Field(
        0.04, ge=0, le=1, description="stop once clean accuracy falls below the start minus this"
    )
    rule: Literal["activation", "weight_threshold"] = Field(
        "activation",
        description="activation: mask the last conv layer's least active channels (Liu 2018); "
        "weight_threshold: zero the conv weights below min + (max - min) x step (seed 004's rule)",
    )
    stop: Literal["accuracy", "oracle_success"] = Field(
        "accuracy",
        description="accuracy: the defender's rule (accuracy cutoff or max_pruned); oracle_success: also "
        "stop once the trigger's success is below target_success (the trigger-aware loop of Kashyap & "
        "Maheshwari 2024, an oracle)",
    )
    target_success: float = Field(
        0.01, ge=0, le=1, description="oracle_success stops once the attack success is below this (1%)"
    )
    max_pruned: float = Field(0.95, gt=0, lt=1, description="never prune more than this share of channels")
    finetune_epochs: int = Field(2, ge=0, description="epochs of clean fine-tuning after each pruning step")
    lr: float = Field(0.05, gt=0, description="fine-tuning learning rate (0.01 barely moved our small CNNs)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(64, ge=1)
    val_fraction: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="share of the defender's clean rows held out "
        "to measure accuracy and success during the loop",
    )
    rerank: bool = Field(True, description="re-rank the remaining channels on the fine-tuned model each step")

    def oracle(self) -> str | None:
        if self.stop == "oracle_success":
            return (
                "fine-pruning stops on the trigger's attack success "
                "(the trigger-aware loop of Kashyap & Maheshwari 2024)"
            )
        return None

    def _done(self, asr: float) -> bool:
        """The oracle stop: the trigger no longer works (never for the defender's rule)."""
        return self.stop == "oracle_success" and asr < self.target_success

    def _repair(self, model, clean: Dataset, *, triggered=None, target=None, seed: int = 0) -> Repair:
        check_dataset(clean, "fine_pruning.repair", "clean", min_rows=2)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(clean), generator=generator)
        n_val = min(len(clean) - 1, max(1, round(self.val_fraction * len(clean))))
        val, tune = clean.subset(order[:n_val]), clean.subset(order[n_val:])
        trig_val = None
        if triggered is not None and len(triggered):
            trig_val = triggered[torch.randperm(len(triggered), generator=generator)[: max(n_val, 1)]]
        model = copy.deepcopy(model).eval()
        pruner = (ChannelPruner if self.rule == "activation" else WeightThresholdPruner)(model, tune.x, self)
        acc0, asr0 = accuracy(model, val), attack_success(model, trig_val, target)
        cutoff = acc0 - self.max_accuracy_drop
        steps = [
            {"step": 0, "pruned": 0, "pruned_fraction": 0.0, "clean_accuracy": acc0, "attack_success": asr0}
        ]
        best_state = copy.deepcopy(model.state_dict())
        config = TrainConfig(
            epochs=max(1, self.finetune_epochs),
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            device="cpu",
            checkpoint_every=max(1, self.finetune_epochs),
        )
        acc, asr = acc0, asr0
        while acc >= cutoff and not pruner.exhausted() and not self._done(asr):
            pruned, fraction = pruner.prune()
            if self.finetune_epochs:
                train(model, tune, config, seed=(seed + len(steps)) % 2**64)
            model.eval()
            acc, asr = accuracy(model, val), attack_success(model, trig_val, target)
            steps.append(
                {
                    "step": len(steps),
                    "pruned": pruned,
                    "pruned_fraction": fraction,
                    "clean_accuracy": acc,
                    "attack_success": asr,
                }
            )
            if acc >= cutoff:
                best_state = copy.deepcopy(model.state_dict())
        model.load_state_dict(best_state)
        model.eval()
        kept = max(i for i, s in enumerate(steps) if s["clean_accuracy"] >= cutoff)
        info = {
            pruner.unit: pruner.total,
            "cutoff": cutoff,
            "kept_step": kept,
            "pruned_at_kept_step": steps[kept]["pruned"],
            "max_accuracy_drop": self.max_accuracy_drop,
            "target_success": self.target_success,
        }
        return Repair(model, steps, info)

    def figures(self, ident: str, record: dict) -> dict[str, bytes]:
        """Clean accuracy and attack success per pruning step, with the cutoff and the kept step."""
        from poisonlab.report import fine_pruning_png

        if not record.get("steps"):
            return {}
        return {
            f"Defense {ident}: accuracy and attack success per step": fine_pruning_png(
                ident,
                record["steps"],
                record.get("cutoff"),
                record.get("target_success"),
                record.get("kept_step"),
                unit="weights" if "weights" in record else "channels",
            )
        }
