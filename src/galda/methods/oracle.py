"""The ceiling row: trained WITH target labels. Never a domain-adaptation result.

Every results file it writes carries ``uses_target_labels: true`` and the report labels the row.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from galda.errors import GaldaError
from galda.methods.base import MergerClassifier


class OracleClassifier(MergerClassifier):
    """CE(source) + CE(target) with target labels; needs ``data.target_labels_in_training``."""

    uses_target: ClassVar[bool] = True
    uses_target_labels: ClassVar[bool] = True

    def transfer_loss(self, source_features: Tensor, target_features: Tensor):
        return source_features.new_zeros(()), {}

    def supervised_target_loss(self, logits_t: Tensor | None, target: Any) -> Tensor:
        if not isinstance(target, (tuple, list)):
            raise GaldaError(
                "method=oracle needs target labels in training, but the DataModule withheld them "
                "(data.target_labels_in_training is false)"
            )
        loss = F.cross_entropy(logits_t, target[1])
        self.log("train/loss_target_cls", loss, on_step=True, on_epoch=True)
        return loss
