"""Controls that separate what a transfer loss adds from what batch statistics add.

``bnmix``: source-only cross-entropy, but every step forwards the source and target batches as one
batch, as MMD and DANN do, so batch norm normalises with statistics of both domains. Any gain of
MMD/DANN beyond this control is the transfer loss's own.

``adabn`` (Li et al. 2016, "Revisiting batch normalization for practical domain adaptation"):
source-only training; before target images are evaluated, every batch-norm layer's running mean
and variance are re-estimated on the unlabelled target training images. No target label is used.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from galda.methods.base import MergerClassifier, StepOutputs
from galda.methods.domain_statistics import batchnorm_layers, copy_running_stats, set_running_stats


class BNMixClassifier(MergerClassifier):
    """Cross-entropy on source; source and target forwarded together; no transfer loss."""

    uses_target_images: ClassVar[bool] = True


class AdaBNClassifier(MergerClassifier):
    """The baseline with target batch-norm statistics for target evaluation (and inference).

    The target statistics (:class:`~galda.methods.domain_statistics.TargetStatistics`) travel in
    the checkpoint; they are re-estimated at the start of every validation and test epoch from the
    target training images, as a cumulative average (momentum ``None``) in chunks of the batch size.
    """

    uses_target_images: ClassVar[bool] = True  # read at evaluation only, never in the loss

    def _forward_domains(
        self, x_s: Tensor, x_t: Tensor | None
    ) -> tuple[StepOutputs, StepOutputs | None]:
        return StepOutputs(*self.net(x_s)), None  # train exactly as the baseline

    @torch.no_grad()
    def adapt(self, target_images: Tensor, batch_size: int = 128) -> None:
        """Re-estimate the target statistics from (normalised) target images."""
        layers = batchnorm_layers(self.net)
        saved = [(*copy_running_stats(m), m.momentum) for m in layers]
        was_training = self.net.training
        self.net.train()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
        for start in range(0, len(target_images), batch_size):
            self.net(target_images[start : start + batch_size].to(self.device))
        self.target_stats = [copy_running_stats(m) for m in layers]
        for m, (mean, var, momentum) in zip(layers, saved):
            set_running_stats(m, mean, var)
            m.momentum = momentum
        self.net.train(was_training)

    def _adapt_from_datamodule(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "datasets", None):
            self.adapt(datamodule.datasets["target"]["train"].images, datamodule.batch_size)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._adapt_from_datamodule()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._adapt_from_datamodule()
