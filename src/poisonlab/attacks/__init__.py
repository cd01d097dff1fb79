"""Attacks, one module per family; importing the package registers them."""

from poisonlab.attacks.base import Attack
from poisonlab.attacks.label_flip import RandomLabelFlip, TargetedLabelFlip

__all__ = ["Attack", "RandomLabelFlip", "TargetedLabelFlip"]
