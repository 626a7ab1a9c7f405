"""Controls that separate what a transfer loss adds from what batch statistics add.

``bnmix``: source-only cross-entropy, but every step forwards the source and target batches as one
batch, as MMD and DANN do, so batch norm normalises with statistics of both domains. Any gain of
MMD/DANN beyond this control is the transfer loss's own.

``adabn`` (Li et al. 2016, "Revisiting batch normalization for practical domain adaptation"):
source-only training; before target images are evaluated, every batch-norm layer's running mean
and variance are re-estimated on the unlabelled target training images. No target label is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from galda.methods.base import MergerClassifier, StepOutputs


def _running_stats(m: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """A batch-norm layer's running mean and variance buffers (galda's networks track them)."""
    assert m.running_mean is not None and m.running_var is not None
    return m.running_mean, m.running_var


def _copy_running_stats(m: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Copies of a batch-norm layer's running mean and variance."""
    mean, var = _running_stats(m)
    return mean.clone(), var.clone()


def _set_running_stats(m: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor) -> None:
    """Overwrite a batch-norm layer's running mean and variance in place."""
    running_mean, running_var = _running_stats(m)
    running_mean.copy_(mean)
    running_var.copy_(var)


def set_batchnorm_statistics(net: nn.Module, stats: list) -> None:
    """Copy ``[(running_mean, running_var), ...]`` into ``net``'s batch-norm layers, in order."""
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(layers) != len(stats):
        raise ValueError(f"{len(stats)} sets of statistics for {len(layers)} batch-norm layers")
    for layer, (mean, var) in zip(layers, stats):
        assert layer.running_mean is not None and layer.running_var is not None
        layer.running_mean.copy_(torch.as_tensor(mean))
        layer.running_var.copy_(torch.as_tensor(var))


class BNMixClassifier(MergerClassifier):
    """Cross-entropy on source; source and target forwarded together; no transfer loss."""

    uses_target_images: ClassVar[bool] = True


class AdaBNClassifier(MergerClassifier):
    """The baseline with target batch-norm statistics for target evaluation (and inference).

    The target statistics are buffers (``adabn_target``), so they travel in the checkpoint; they
    are re-estimated at the start of every validation and test epoch from the target training
    images, as a cumulative average (momentum ``None``) in chunks of the batch size.
    """

    uses_target_images: ClassVar[bool] = True  # read at evaluation only, never in the loss

    def _forward_domains(
        self, x_s: Tensor, x_t: Tensor | None
    ) -> tuple[StepOutputs, StepOutputs | None]:
        return StepOutputs(*self.net(x_s)), None  # train exactly as the baseline

    def _norm_layers(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @torch.no_grad()
    def adapt(self, target_images: Tensor, batch_size: int = 128) -> None:
        """Re-estimate the target statistics from (normalised) target images."""
        layers = self._norm_layers()
        saved = [(*_copy_running_stats(m), m.momentum) for m in layers]
        was_training = self.net.training
        self.net.train()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
        for start in range(0, len(target_images), batch_size):
            self.net(target_images[start : start + batch_size].to(self.device))
        self._target_stats = [_copy_running_stats(m) for m in layers]
        for m, (mean, var, momentum) in zip(layers, saved):
            _set_running_stats(m, mean, var)
            m.momentum = momentum
        self.net.train(was_training)

    @contextlib.contextmanager
    def target_statistics(self) -> Iterator[None]:
        """Swap the target statistics in for the duration of the block."""
        layers = self._norm_layers()
        stats = getattr(self, "_target_stats", None)
        if not stats:
            yield
            return
        saved = [_copy_running_stats(m) for m in layers]
        for m, (mean, var) in zip(layers, stats):
            _set_running_stats(m, mean, var)
        try:
            yield
        finally:
            for m, (mean, var) in zip(layers, saved):
                _set_running_stats(m, mean, var)

    def _adapt_from_datamodule(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "datasets", None):
            self.adapt(datamodule.datasets["target"]["train"].images, datamodule.batch_size)

    def on_validation_epoch_start(self) -> None:
        self._adapt_from_datamodule()

    def on_test_epoch_start(self) -> None:
        self._adapt_from_datamodule()

    def _eval_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int) -> dict:
        if self._domain(stage, dataloader_idx) != "target":
            return super()._eval_step(stage, batch, dataloader_idx)
        with self.target_statistics():
            return super()._eval_step(stage, batch, dataloader_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        stats = getattr(self, "_target_stats", None)
        if stats:
            checkpoint["adabn_target"] = [[m.cpu(), v.cpu()] for m, v in stats]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get("adabn_target"):
            self._target_stats = [
                (m.to(self.device), v.to(self.device)) for m, v in checkpoint["adabn_target"]
            ]
