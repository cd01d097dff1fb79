"""CBD (Zhang et al. 2023, "Backdoor Defense via Deconfounded Representation Learning"; one of Mendata's
prevention baselines, Huang 2023, Table 6): a model trained briefly on the released data learns the
backdoor's shortcut first; the defended model is then trained with every row weighed by how much better that
backdoored model fits it than the defended model does.

1. f_B: trained on the released data for ``backdoor_epochs`` (the authors' code: 5 of the 100 epochs, an
   early stop), then frozen.
2. f_C: trained on the released data; on every batch (after augmentation)

       w_i = CE(f_B(x_i), y_i) / (CE(f_B(x_i), y_i) + CE(f_C(x_i), y_i) + 1e-8),   w <- w * B / sum(w)
       loss = mean_i w_i * CE(f_C(x_i), y_i)

   (both losses detached in the weight), so a row f_B fits easily, a poison, counts little.

The mutual-information penalty between the two models' features (a discriminator; ``--disentangle``) is off
by default in the authors' code and is not implemented here. ``backdoor_epochs`` defaults to 2: f_B must have
learned the trigger but not yet the clean rows (the authors' 5 of 100 epochs). Measured on the CIFAR-10
subset (BadNets 10%, 8-epoch `cnn`): after 1 epoch f_B has not learned the trigger and CBD changes nothing;
after 2 the attack falls to the clean twin's level at no accuracy cost. On the bundled digits, learned in an
epoch, f_B fits the clean rows too and the weights starve the rows the defended model has not learned yet
(accuracy falls to 20-70%): an early stop is a property of the data, set it per data set. The weights of the
final models over all rows (normalised to mean 1) are reported, so the runner can compare poisons with clean
rows.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field

from poisonlab.defenses.training import Defended, TrainingDefense
from poisonlab.registry import register
from poisonlab.training import TrainHook


def cbd_weights(backdoored_loss: torch.Tensor, clean_loss: torch.Tensor) -> torch.Tensor:
    """w = CE_B / (CE_B + CE_C + 1e-8), rescaled to mean 1."""
    w = backdoored_loss / (backdoored_loss + clean_loss + 1e-8)
    return w * len(w) / w.sum().clamp_min(1e-12)


class _Reweigh(TrainHook):
    reads_images = True  # f_B runs on the images (in transfer too)

    def __init__(self, backdoored: torch.nn.Module):
        self.backdoored = copy.deepcopy(backdoored).eval()
        for p in self.backdoored.parameters():
            p.requires_grad_(False)

    def loss(self, logits, xb, yb, model):
        with torch.no_grad():
            lb = F.cross_entropy(self.backdoored.to(xb.device)(xb), yb, reduction="none")
        lc = F.cross_entropy(logits, yb, reduction="none")
        return (cbd_weights(lb, lc.detach()) * lc).mean()


@torch.no_grad()
def _losses(model: torch.nn.Module, data) -> torch.Tensor:
    model.eval()
    parts = [
        F.cross_entropy(model(xb), yb, reduction="none")
        for xb, yb in zip(data.x.split(1024), data.y.split(1024))
    ]
    return torch.cat(parts)


@register("training_defense", "cbd")
class CBD(TrainingDefense):
    """CBD (Zhang 2023): weigh each row by how much better an early-stopped backdoored model fits it."""

    backdoor_epochs: int = Field(
        2,
        ge=1,
        description="epochs of the backdoored model (the authors: 5 of 100; long enough to learn a trigger)",
    )

    def _train(self, data, fit, *, victim, generator) -> Defended:
        backdoored = fit(data, desc="cbd: backdoored model", epochs=self.backdoor_epochs).model
        run = fit(data, hook=_Reweigh(backdoored), desc="cbd")
        weights = cbd_weights(_losses(backdoored, data), _losses(run.model, data))
        return Defended(run, torch.zeros(len(data), dtype=torch.bool), {}, weights=weights)
