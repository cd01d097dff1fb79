"""Training-set detectors (one suspicion score per row); importing the package registers them."""

from poisonlab.detection.base import Detector
from poisonlab.detection.tracin import TracInSelf, TracInTest, influence, self_influence, summed_influence

__all__ = ["Detector", "TracInSelf", "TracInTest", "influence", "self_influence", "summed_influence"]
