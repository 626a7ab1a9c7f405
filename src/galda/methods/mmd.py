"""Maximum mean discrepancy between source and target features (paper Eq. 2–3)."""

from __future__ import annotations

from torch import Tensor, nn

from galda.losses import MMDLoss
from galda.methods.base import MergerClassifier


class MMDClassifier(MergerClassifier):
    """CE(source) + λ · MMD²(source features, target features).

    Args:
        bandwidths: ``"median"`` (multi-scale around the batch's median pairwise squared
            distance, computed without gradient) or ``"paper"`` (the authors' 19 fixed variances).
        unbiased: the paper's Eq. 3 estimator (i ≠ j); ``False`` for the biased V-statistic.
        n_kernels, multiplier: the median set's size and geometric step.
    """

    def __init__(
        self,
        net: nn.Module,
        bandwidths: str = "median",
        unbiased: bool = True,
        n_kernels: int = 5,
        multiplier: float = 2.0,
        **kwargs,
    ) -> None:
        super().__init__(net, **kwargs)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.mmd = MMDLoss(
            bandwidths=bandwidths, unbiased=unbiased, n_kernels=n_kernels, multiplier=multiplier
        )

    def transfer_loss(self, source_features: Tensor, target_features: Tensor):
        return self.mmd(source_features, target_features), {}
