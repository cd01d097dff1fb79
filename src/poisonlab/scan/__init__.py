"""``poisonlab scan``: audit a training set you did not build (an ensemble of detectors, no ground truth)."""

from poisonlab.scan.core import DETECTORS, Scan, combine, confident_learning, scan

__all__ = ["DETECTORS", "Scan", "combine", "confident_learning", "scan"]
