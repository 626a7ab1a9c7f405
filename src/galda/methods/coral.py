"""Deep CORAL: align source and target feature covariances (Sun & Saenko 2016)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from galda.losses import coral_loss
from galda.methods.base import MergerClassifier, StepOutputs


class CORALClassifier(MergerClassifier):
    """CE(source) + λ · ‖C_s − C_t‖²_F / (4d²) on the feature layer: see
    :func:`galda.losses.coral_loss`. No parameters beyond λ (``transfer_weight``)."""

    uses_target_images: ClassVar[bool] = True
    uses_target_labels: ClassVar[bool] = False

    def transfer_loss(
        self, source: StepOutputs, target: StepOutputs
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        return coral_loss(source.features, target.features), {}
