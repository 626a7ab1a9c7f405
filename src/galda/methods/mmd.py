"""Maximum mean discrepancy between source and target features (paper Eq. 2–3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from galda.losses import MMDLoss
from galda.methods.base import MergerClassifier, OptimizerFactory, SchedulerFactory, StepOutputs


class MMDClassifier(MergerClassifier):
    """CE(source) + λ · MMD²(source features, target features).

    Args:
        bandwidths: ``"median"`` (multi-scale around the batch's median pairwise squared
            distance, computed without gradient) or ``"paper"`` (the authors' 19 fixed variances).
        unbiased: the paper's Eq. 3 estimator (i ≠ j); ``False`` for the biased V-statistic.
        n_kernels, multiplier: the median set's size and geometric step.
        (other arguments: :class:`~galda.methods.base.MergerClassifier`)
    """

    def __init__(
        self,
        net: nn.Module | Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        transfer_weight: float = 1.0,
        fisher_weight: float = 0.0,
        entropy_weight: float = 0.0,
        domain_batchnorm: bool | str = False,
        align: str = "both",
        target_stem: bool = False,
        bandwidths: str = "median",
        unbiased: bool = True,
        n_kernels: int = 5,
        multiplier: float = 2.0,
    ) -> None:
        super().__init__(
            net,
            optimizer,
            scheduler,
            transfer_weight,
            fisher_weight,
            entropy_weight,
            domain_batchnorm,
            align,
            target_stem,
        )
        self.mmd = MMDLoss(
            bandwidths=bandwidths, unbiased=unbiased, n_kernels=n_kernels, multiplier=multiplier
        )

    def transfer_loss(
        self, source: StepOutputs, target: StepOutputs
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        return self.mmd(source.features, target.features), {}
