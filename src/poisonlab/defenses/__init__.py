"""Defenses: model repairs (a trained model and clean data in, a repaired model out) and training-time
defenses (they change how the victim trains); importing the package registers them."""

from poisonlab.defenses.adversarial_training import AdversarialTraining
from poisonlab.defenses.asd import ASD
from poisonlab.defenses.base import Defense
from poisonlab.defenses.cbd import CBD
from poisonlab.defenses.epic import EPIC
from poisonlab.defenses.fine_pruning import ChannelMask, FinePruning, channel_activations, mask_last_conv
from poisonlab.defenses.frienb import FrienB
from poisonlab.defenses.knn_removal import KNNRemoval
from poisonlab.defenses.training import Defended, TrainingDefense

__all__ = [
    "ASD",
    "AdversarialTraining",
    "CBD",
    "ChannelMask",
    "Defended",
    "Defense",
    "EPIC",
    "FinePruning",
    "FrienB",
    "KNNRemoval",
    "TrainingDefense",
    "channel_activations",
    "mask_last_conv",
]
