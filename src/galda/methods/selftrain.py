"""Self-training with confident, class-balanced pseudo-labels (the simple baseline)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from galda.errors import GaldaError
from galda.losses import confident_pseudo_label_loss
from galda.methods.base import MergerClassifier, OptimizerFactory, SchedulerFactory, StepOutputs


class SelfTrainingClassifier(MergerClassifier):
    """CE(source) + λ · [p ≥ warmup] · class-balanced CE(target, ŷ) on confident target images.

    After ``warmup`` (a fraction of training progress p = global_step / total steps), each target
    image in the batch whose softmax maximum exceeds ``threshold`` joins training with its
    predicted class ŷ as label; the pseudo-labels come from the current model's predictions on the
    same batch, detached. Each pseudo-class weighs equally (see
    :func:`galda.losses.confident_pseudo_label_loss`). Logs the fraction of confident target images.
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
        threshold: float = 0.95,
        warmup: float = 0.2,
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
        if not 0.0 <= threshold < 1.0:
            raise GaldaError(f"method.module.threshold={threshold} must be in [0, 1)")
        if not 0.0 <= warmup <= 1.0:
            raise GaldaError(
                f"method.module.warmup={warmup} must be a fraction of training in [0, 1]"
            )
        self.threshold = float(threshold)
        self.warmup = float(warmup)

    def transfer_loss(
        self, source: StepOutputs, target: StepOutputs
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        loss, confident, _ = confident_pseudo_label_loss(target.logits, self.threshold)
        active = self.progress >= self.warmup
        if not active:
            loss = loss * 0.0
        return loss, {
            "train/pseudo_fraction": confident.float().mean(),
            "train/pseudo_active": float(active),
        }
