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
``[[running_mean, running_var], ...]`` in the order of the network's batch-norm layers (with
``domain_batchnorm="affine"``, ``[[running_mean, running_var, weight, bias], ...]``: the target's own
γ and β, as in Chang et al.'s full DSBN), which is what
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
#: the target's own first convolution in a module's state_dict (``target_stem``)
STEM_PREFIX = "target_stem."


def first_convolution(net: nn.Module) -> nn.Conv2d:
    """The network's first 2-d convolution in module order (DeepMerge's ``features.0``, ResNet's
    ``conv1``): the layer a ``target_stem`` unties."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError(f"{type(net).__name__} has no nn.Conv2d to untie")


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
    """Copy ``[(running_mean, running_var[, weight, bias]), ...]`` into ``net``'s batch-norm
    layers, in order (the γ, β of a per-domain affine batch norm when present)."""
    layers = batchnorm_layers(net)
    if len(layers) != len(stats):
        raise ValueError(f"{len(stats)} sets of statistics for {len(layers)} batch-norm layers")
    for layer, entry in zip(layers, stats):
        set_running_stats(layer, torch.as_tensor(entry[0]), torch.as_tensor(entry[1]))
        if len(entry) == 4:
            with torch.no_grad():
                layer.weight.copy_(torch.as_tensor(entry[2]))
                layer.bias.copy_(torch.as_tensor(entry[3]))


def set_target_stem(net: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Copy a checkpoint's ``target_stem.*`` weights (the target's own first convolution) into
    ``net``'s first convolution; nothing when the checkpoint has none."""
    stem = [state_dict[k] for k in (f"{STEM_PREFIX}0", f"{STEM_PREFIX}1") if k in state_dict]
    if not stem:
        return
    conv = first_convolution(net)
    with torch.no_grad():
        conv.weight.copy_(stem[0])
        if conv.bias is not None and len(stem) > 1:
            conv.bias.copy_(stem[1])


class TargetStatistics(EvaluationSteps):
    """Target batch-norm statistics beside the network's (source) ones; mixed into a galda module.

    ``target_stats`` is empty until a method fills it (AdaBN's ``adapt`` or a training step with
    ``domain_batchnorm``); while empty, target images use the network's own statistics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.target_stats: list[tuple[Tensor, Tensor]] = []
        #: the target's own batch-norm γ, β per layer (``domain_batchnorm="affine"``), else None
        self.target_affine: nn.ParameterList | None = None
        #: the target's own first convolution, weight [and bias] (``target_stem``), else None
        self.target_stem: nn.ParameterList | None = None

    def init_target_affine(self) -> None:
        """Give the target its own batch-norm scale and shift, starting from the network's."""
        self.target_affine = nn.ParameterList(
            nn.Parameter(p.detach().clone())
            for m in batchnorm_layers(self.net)
            for p in (m.weight, m.bias)
        )

    def init_target_stem(self) -> None:
        """Give the target its own first convolution, starting from the network's."""
        conv = first_convolution(self.net)
        self.target_stem = nn.ParameterList(
            nn.Parameter(p.detach().clone()) for p in (conv.weight, conv.bias) if p is not None
        )

    def _target_affine_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        if self.target_affine is None:
            return []
        params = list(self.target_affine)
        return list(zip(params[0::2], params[1::2]))

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
        saved_affine = [(m.weight, m.bias) for m in layers]
        start = self.target_stats or [(torch.zeros_like(m), torch.ones_like(v)) for m, v in saved]
        for m, (mean, var) in zip(layers, start):
            _swap_running_stats(m, mean, var)
        for m, (weight, bias) in zip(layers, self._target_affine_pairs()):
            m.weight, m.bias = weight, bias  # the target's own γ, β receive its gradients
        conv = first_convolution(self.net) if self.target_stem is not None else None
        saved_stem = (conv.weight, conv.bias) if conv is not None else None
        if conv is not None and self.target_stem is not None:
            conv.weight = self.target_stem[0]
            if conv.bias is not None:
                conv.bias = self.target_stem[1]
        try:
            yield
        finally:
            if keep_updates:
                self.target_stats = [_running_stats(m) for m in layers]
            for m, (mean, var), (weight, bias) in zip(layers, saved, saved_affine):
                _swap_running_stats(m, mean, var)
                m.weight, m.bias = weight, bias
            if conv is not None and saved_stem is not None:
                conv.weight, conv.bias = saved_stem

    def _eval_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int) -> dict:
        if self._domain(stage, dataloader_idx) != "target":
            return super()._eval_step(stage, batch, dataloader_idx)
        with self.target_statistics():
            return super()._eval_step(stage, batch, dataloader_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.target_stats:
            affine = self._target_affine_pairs()
            checkpoint[CHECKPOINT_KEY] = [
                [m.cpu(), v.cpu(), *(p.detach().cpu() for p in (affine[i] if affine else ()))]
                for i, (m, v) in enumerate(self.target_stats)
            ]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get(CHECKPOINT_KEY):
            # [mean, var] per layer, + [γ, β] with per-domain affine (those also load as parameters)
            self.target_stats = [
                (layer[0].to(self.device), layer[1].to(self.device))
                for layer in checkpoint[CHECKPOINT_KEY]
            ]
