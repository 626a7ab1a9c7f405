"""Batch-norm statistics per domain: the source's in the network, the target's beside it.

Two users:

- ``method=adabn`` (Li et al. 2016, "Revisiting batch normalization for practical domain
  adaptation"): source-only training; the target statistics are re-estimated on the unlabelled
  target training images before each evaluation.
- ``method.module.domain_batchnorm=true`` for any method that trains on target images: a
  domain-specific batch norm with shared affine parameters (Chang et al. 2019, CVPR, "Domain-specific
  batch normalization for unsupervised domain adaptation"). Source and target batches are normalised
  separately during training, each domain keeps its own running mean and variance, and each domain's
  images are evaluated (and later classified by ``galda.predict``) with its own statistics.

Why the second exists: forwarded as one batch, source and target share batch statistics, and the
``bnmix`` control (source loss only, mixed batches) lost 3.4 points of *source* accuracy against the
plain baseline with no transfer loss at all (experiments/README.md §0). Per-domain statistics remove
that mixing; what a transfer loss still costs the source is then its own.

The target statistics are stored in the checkpoint under ``adabn_target`` as
``[[running_mean, running_var], ...]`` in the order of the network's batch-norm layers, which is what
:func:`galda.inference.predictor_from_checkpoint` reads for ``domain="target"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from galda.methods.evaluation import EvaluationSteps

BatchNorm = nn.modules.batchnorm._BatchNorm
CHECKPOINT_KEY = "adabn_target"


def batchnorm_layers(net: nn.Module) -> list[BatchNorm]:
    """The network's batch-norm layers, in module order."""
    return [m for m in net.modules() if isinstance(m, BatchNorm)]


def _running_stats(m: BatchNorm) -> tuple[Tensor, Tensor]:
    """A batch-norm layer's running mean and variance buffers (galda's networks track them)."""
    assert m.running_mean is not None and m.running_var is not None
    return m.running_mean, m.running_var


def _swap_running_stats(m: BatchNorm, mean: Tensor, var: Tensor) -> None:
    """Make ``mean`` and ``var`` (not copies) the layer's running-statistics buffers."""
    m.running_mean, m.running_var = mean, var


def copy_running_stats(m: BatchNorm) -> tuple[Tensor, Tensor]:
    """Copies of a batch-norm layer's running mean and variance."""
    mean, var = _running_stats(m)
    return mean.clone(), var.clone()


def set_running_stats(m: BatchNorm, mean: Tensor, var: Tensor) -> None:
    """Overwrite a batch-norm layer's running mean and variance in place."""
    running_mean, running_var = _running_stats(m)
    running_mean.copy_(mean)
    running_var.copy_(var)


def set_batchnorm_statistics(net: nn.Module, stats: list) -> None:
    """Copy ``[(running_mean, running_var), ...]`` into ``net``'s batch-norm layers, in order."""
    layers = batchnorm_layers(net)
    if len(layers) != len(stats):
        raise ValueError(f"{len(stats)} sets of statistics for {len(layers)} batch-norm layers")
    for layer, (mean, var) in zip(layers, stats):
        set_running_stats(layer, torch.as_tensor(mean), torch.as_tensor(var))


class TargetStatistics(EvaluationSteps):
    """Target batch-norm statistics beside the network's (source) ones; mixed into a galda module.

    ``target_stats`` is empty until a method fills it (AdaBN's ``adapt`` or a training step with
    ``domain_batchnorm``); while empty, target images use the network's own statistics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.target_stats: list[tuple[Tensor, Tensor]] = []

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        """``nn.Module._apply`` (behind ``.to``, ``.cuda``, ``.double``…) also moves the target statistics.

        They are kept as a list beside the network, not as buffers, so that the checkpoint key and the
        network's own ``state_dict`` stay as AdaBN has always written them.
        """
        module = super()._apply(fn, recurse)
        self.target_stats = [(fn(mean), fn(var)) for mean, var in self.target_stats]
        return module

    @contextlib.contextmanager
    def target_statistics(self, keep_updates: bool = False) -> Iterator[None]:
        """Swap the target statistics into the network for the block, then restore the source's.

        With ``keep_updates`` (a training forward of target images), what batch norm wrote into its
        running statistics during the block becomes the new target statistics; the first such block
        starts from a fresh layer's statistics (mean 0, variance 1).
        """
        layers = batchnorm_layers(self.net)
        if not self.target_stats and not keep_updates:
            yield
            return
        # the buffers are swapped, never overwritten: batch norm saves them for the backward pass
        saved = [_running_stats(m) for m in layers]
        start = self.target_stats or [(torch.zeros_like(m), torch.ones_like(v)) for m, v in saved]
        for m, (mean, var) in zip(layers, start):
            _swap_running_stats(m, mean, var)
        try:
            yield
        finally:
            if keep_updates:
                self.target_stats = [_running_stats(m) for m in layers]
            for m, (mean, var) in zip(layers, saved):
                _swap_running_stats(m, mean, var)

    def _eval_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int) -> dict:
        if self._domain(stage, dataloader_idx) != "target":
            return super()._eval_step(stage, batch, dataloader_idx)
        with self.target_statistics():
            return super()._eval_step(stage, batch, dataloader_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.target_stats:
            checkpoint[CHECKPOINT_KEY] = [[m.cpu(), v.cpu()] for m, v in self.target_stats]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get(CHECKPOINT_KEY):
            self.target_stats = [
                (m.to(self.device), v.to(self.device)) for m, v in checkpoint[CHECKPOINT_KEY]
            ]
