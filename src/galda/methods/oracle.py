"""The ceiling rows: trained WITH target labels. Never a domain-adaptation result (marked ‡).

``oracle`` trains on labelled target images only and selects its checkpoint on target validation
(a target specialist); ``oracle_joint`` trains on labelled source and target images together.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from galda.methods.base import MergerClassifier


class JointOracleClassifier(MergerClassifier):
    """CE(source) + CE(target), target labels included (the DataModule hands them over)."""

    uses_target_images: ClassVar[bool] = True
    uses_target_labels: ClassVar[bool] = True


class OracleClassifier(MergerClassifier):
    """CE(target) on labelled target images only: the ceiling for a target specialist."""

    uses_target_images: ClassVar[bool] = True
    uses_target_labels: ClassVar[bool] = True

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x_t, y_t = batch["target"]
        logits = self.net(x_t)[1]
        loss = F.cross_entropy(logits, y_t)
        self.log_training(
            {"train/loss": loss, "train/target/acc": (logits.argmax(1) == y_t).float().mean()},
            batch_size=x_t.shape[0],
        )
        return loss
