"""The pruning-aware backdoor attack (Liu, Dolan-Gavitt & Garg 2018, section 3.3), against which seed 004
(Kashyap & Maheshwari 2024) argues for fine-tuning after pruning.

The attacker trains the victim itself (outsourced training) and hides the backdoor from a pruning defense:

1. train a clean model (here: the victim's clean twin, the same seed and schedule);
2. prune the last conv layer's ``prune_fraction`` channels least active on clean rows (masked);
3. retrain the pruned model on the BadNets-poisoned set (the backdoor must live in the channels clean
   inputs also use);
4. de-prune: reinstate the pruned channels with their biases lowered so that they stay dormant (zero after
   the ReLU) on every clean and poisoned training row: the decoys a pruning defender removes first.

Choices (the paper leaves them open): ``prune_fraction`` 0.5 (the paper: "a design parameter of the
attack"); the retraining runs the victim's full schedule from the pruned clean weights; a decoy's bias
is lowered by its largest post-ReLU activation on the training rows plus ``decoy_margin``. The bias is
that of the last affine map before the block's ReLU (the conv's own bias in ``cnn``, the last batch norm's
shift in a residual block). The poisons are BadNets' (all its options apply); only the training differs.
The victim keeps one checkpoint, its final weights (the masked model's trajectory does not fit the
de-pruned one).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from poisonlab.attacks.backdoor import BadNets
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.registry import register
from poisonlab.training import Checkpoint, TrainConfig, TrainRun, train


def _block_bias(block: nn.Module, channels: int) -> torch.Tensor:
    """The bias of the last conv or batch norm of ``block`` with ``channels`` outputs: what shifts the
    channel's value before the block's ReLU."""
    last = None
    for module in block.modules():
        if isinstance(module, nn.BatchNorm2d) and module.num_features == channels and module.affine:
            last = module.bias
        elif isinstance(module, nn.Conv2d) and module.out_channels == channels and module.bias is not None:
            last = module.bias
    if last is None:
        raise ConfigError("pruning_aware: the last conv block has no bias or batch-norm shift to lower")
    return last


@register("attack", "pruning_aware")
class PruningAware(BadNets):
    """Pruning-aware BadNets (Liu 2018): the attacker trains the victim with decoy channels a pruning
    defense removes first, and the backdoor in the channels clean inputs use."""

    trains_victim: ClassVar[bool] = True
    prune_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="share of the last conv layer's channels pruned, then reinstated as decoys",
    )
    decoy_margin: float = Field(1.0, gt=0, description="how far below zero a decoy's largest value is pushed")

    def train_victim(
        self, released: Dataset, clean_x: torch.Tensor, clean: nn.Module, schedule: TrainConfig, *, seed: int
    ) -> TrainRun:
        """Steps 2-4 on a copy of the ``clean`` model (step 1, trained on the rows ``clean_x``); returns the
        retrained, de-pruned victim."""
        from poisonlab.defenses.fine_pruning import channel_activations, mask_last_conv

        model = copy.deepcopy(clean)
        for p in model.parameters():
            p.requires_grad_(True)
        mask = mask_last_conv(model)
        ranking = channel_activations(model, mask, clean_x).argsort()
        pruned = ranking[: max(1, round(self.prune_fraction * len(mask.mask)))]
        with torch.no_grad():
            mask.mask[pruned] = 0.0
        run = train(model, released, schedule, seed=seed)
        # de-prune: the decoys come back, pushed below zero on every training row
        seen = torch.cat([clean_x, released.x])
        lift = channel_activations(model, mask, seen, reduce="max")[pruned] + self.decoy_margin
        name, wrapped = next(
            (n, c) for n, c in model.body.named_children() if isinstance(c, nn.Sequential) and c[-1] is mask
        )
        block = wrapped[0]
        with torch.no_grad():
            bias = _block_bias(block, len(mask.mask))
            bias[pruned] -= lift.to(bias.dtype).to(bias.device)
        setattr(model.body, name, block)
        model.eval()
        last = run.checkpoints[-1]  # the masked model's trajectory does not fit the de-pruned model
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return TrainRun(model, [Checkpoint(last.epoch, last.lr, state)], run.history, run.seconds)
