"""Attacks, one module per family; importing the package registers them."""

from poisonlab.attacks.backdoor import BackdoorAttack, BadNets, Blend
from poisonlab.attacks.base import Attack
from poisonlab.attacks.label_flip import RandomLabelFlip, TargetedLabelFlip
from poisonlab.attacks.sleeper_agent import SleeperAgent

__all__ = [
    "Attack",
    "BackdoorAttack",
    "BadNets",
    "Blend",
    "RandomLabelFlip",
    "SleeperAgent",
    "TargetedLabelFlip",
]
