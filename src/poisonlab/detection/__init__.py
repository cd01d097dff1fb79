"""Training-set detectors (one suspicion score per row) and input-time detectors (fit on clean inputs, score
inputs); importing the package registers them."""

from poisonlab.detection.activation_clustering import ActivationClustering
from poisonlab.detection.base import Detector
from poisonlab.detection.influence import TracInCP
from poisonlab.detection.input_time import InputDetector
from poisonlab.detection.knn import KNNK, DeepKNN
from poisonlab.detection.simulated import SimulatedDetector
from poisonlab.detection.spectral import SpectralSignature
from poisonlab.detection.strip import Strip
from poisonlab.detection.tracin import TracInSelf, TracInTest, influence, self_influence, summed_influence
from poisonlab.detection.tracin_ideal import TracInIdeal, TracInIdealRecorder

__all__ = [
    "ActivationClustering",
    "DeepKNN",
    "KNNK",
    "Detector",
    "InputDetector",
    "SimulatedDetector",
    "SpectralSignature",
    "Strip",
    "TracInCP",
    "TracInSelf",
    "TracInIdeal",
    "TracInIdealRecorder",
    "TracInTest",
    "influence",
    "self_influence",
    "summed_influence",
]
