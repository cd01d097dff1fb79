"""Model defenses (repair a trained model with clean data); importing the package registers them."""

from poisonlab.defenses.base import Defense
from poisonlab.defenses.fine_pruning import ChannelMask, FinePruning, channel_activations, mask_last_conv

__all__ = ["ChannelMask", "Defense", "FinePruning", "channel_activations", "mask_last_conv"]
