"""Purification (Mendata, Huang 2023): select a reference set, then change or drop the untrusted rows.

Importing the package registers the purifiers (kind ``purifier``): ``mendata``, ``random_noise``,
``friendly_noise``, ``ref`` and ``remove``.
"""

from poisonlab.purification.base import Purification, Purifier, load_weights
from poisonlab.purification.mendata import Mendata, critic_network
from poisonlab.purification.noise import FriendlyNoise, RandomNoise, friendly_noise
from poisonlab.purification.reference import (
    Ref,
    RemoveAndRetrain,
    extract_features,
    reference_quality,
    select_reference,
)

__all__ = [
    "FriendlyNoise",
    "Mendata",
    "Purification",
    "Purifier",
    "RandomNoise",
    "Ref",
    "RemoveAndRetrain",
    "critic_network",
    "extract_features",
    "friendly_noise",
    "load_weights",
    "reference_quality",
    "select_reference",
]
