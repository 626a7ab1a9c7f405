"""Minimum class confusion on target predictions (Jin et al. 2020, ECCV)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from galda.errors import GaldaError
from galda.losses import minimum_class_confusion
from galda.methods.base import MergerClassifier, OptimizerFactory, SchedulerFactory, StepOutputs


class MCCClassifier(MergerClassifier):
    """CE(source) + λ · MCC(target logits / T): see :func:`galda.losses.minimum_class_confusion`.

    Acts on target predictions only; no extra parameters.
    """

    uses_target_images: ClassVar[bool] = True
    uses_target_labels: ClassVar[bool] = False

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
        temperature: float = 2.5,
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
        if not temperature > 0:
            raise GaldaError(f"method.module.temperature={temperature} must be > 0")
        self.temperature = float(temperature)

    def transfer_loss(
        self, source: StepOutputs, target: StepOutputs
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        return minimum_class_confusion(target.logits, self.temperature), {}
