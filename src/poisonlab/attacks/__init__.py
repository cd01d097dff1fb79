"""Attacks, one module per family; importing the package registers them."""

from poisonlab.attacks.back_gradient import BackGradient
from poisonlab.attacks.backdoor import BackdoorAttack, BadNets, Blend
from poisonlab.attacks.base import Attack
from poisonlab.attacks.feature_collision import FeatureCollision
from poisonlab.attacks.first_order import FirstOrder, MetaPoison
from poisonlab.attacks.gradient_canceling import GradientCanceling  # noqa: F401  (registers it)
from poisonlab.attacks.gradient_matching import GradientMatching
from poisonlab.attacks.influence_function import InfluenceFunction
from poisonlab.attacks.label_flip import RandomLabelFlip, TargetedLabelFlip
from poisonlab.attacks.min_max import ImprovedMinMax, MinMax
from poisonlab.attacks.pruning_aware import PruningAware
from poisonlab.attacks.radioactive import RadioactiveData
from poisonlab.attacks.sleeper_agent import SleeperAgent
from poisonlab.attacks.targeted import TargetedAttack
from poisonlab.attacks.tgda import TGDA  # noqa: F401  (registers it)
from poisonlab.attacks.unlearnable import UnlearnableExamples

__all__ = [
    "Attack",
    "BackGradient",
    "BackdoorAttack",
    "BadNets",
    "Blend",
    "FeatureCollision",
    "FirstOrder",
    "GradientMatching",
    "ImprovedMinMax",
    "InfluenceFunction",
    "MetaPoison",
    "MinMax",
    "PruningAware",
    "RadioactiveData",
    "RandomLabelFlip",
    "SleeperAgent",
    "TargetedAttack",
    "TargetedLabelFlip",
    "UnlearnableExamples",
]
