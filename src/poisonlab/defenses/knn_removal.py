"""k-NN removal (Peri et al. 2020, "Deep k-NN Defense against Clean-label Data Poisoning Attacks"; one of
Mendata's prevention baselines, Huang 2023, Table 6): before training, drop every row whose label does not
win the plurality vote of its k nearest neighbours in penultimate-feature space, then train on the rest.

The features are the undefended victim's (Peri: the network trained on the poisoned data; in the transfer
setting that is the frozen extractor). A tie between the row's label and another counts as a loss, the rule
of :class:`~poisonlab.detection.knn.DeepKNN`'s reference set, written once there.
"""

from __future__ import annotations

from pydantic import Field

from poisonlab.defenses.training import Defended, TrainingDefense
from poisonlab.detection.knn import DeepKNN
from poisonlab.errors import ConfigError
from poisonlab.registry import register


@register("training_defense", "knn_removal")
class KNNRemoval(TrainingDefense):
    """k-NN removal (Peri 2020): drop rows whose label loses their k nearest neighbours' vote, then train."""

    k: int = Field(
        50, ge=1, description="neighbours, the row itself included (Peri: ~2x the poisons per class)"
    )
    normalize: bool = Field(False, description="L2-normalise the features first (cosine neighbours)")

    def check_data(self, data, test=None) -> None:
        if self.k > len(data):
            raise ConfigError(f"knn_removal: k = {self.k} is larger than the {len(data)} rows")

    def _train(self, data, fit, *, victim, generator) -> Defended:
        if victim is None:
            victim = fit(data, desc="knn_removal: features")
        knn = DeepKNN(k=self.k, normalize=self.normalize)
        keep = knn.reference_mask(
            data, run=victim, features=None, is_poisoned=None, test=None, generator=generator
        )
        run = fit(data.subset(keep), desc="knn_removal: defended")
        return Defended(run, ~keep, {"removed": int((~keep).sum())})
