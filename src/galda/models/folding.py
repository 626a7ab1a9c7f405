"""Batch norm folded into the convolution before it, for inference.

In evaluation mode a batch-norm layer is a fixed per-channel affine map, so a convolution followed by
it is one convolution with rescaled weights (Ioffe & Szegedy 2015; ``torch.nn.utils.fusion``):

    W' = W · γ / √(σ² + ε),    b' = (b − μ) · γ / √(σ² + ε) + β

with μ, σ² the running statistics. The folded network computes the same function to float rounding
and skips one pass over every convolution's output: about a fifth of a DeepMerge forward on the CPU
(benchmarks/README.md). Used for validation, test and ``galda.predict``; training never sees it.
"""

from __future__ import annotations

import copy
from typing import cast

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, _CONV)
        and isinstance(bn, _BATCHNORM)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
    )


def _pairs(module: nn.Module) -> list[tuple[nn.Sequential, str, str]]:
    """(container, conv name, batch-norm name) of every foldable pair, in module order."""
    found = []
    for seq in module.modules():
        if isinstance(seq, nn.Sequential):
            names = list(seq._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = seq._modules[first], seq._modules[second]
                if conv is not None and bn is not None and _foldable(conv, bn):
                    found.append((seq, first, second))
    return found


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An evaluation-mode copy of ``module`` with every convolution → batch norm pair that sits
    next to each other in an ``nn.Sequential`` folded into one convolution (the batch norm becomes
    ``nn.Identity``); everything else is copied unchanged and ``module`` is not touched.

    With nothing to fold (pairs wired by attribute, as in torchvision's ResNet blocks) ``module``
    itself comes back, unchanged: the caller evaluates it as it is.
    """
    if not _pairs(module):
        return module
    folded = copy.deepcopy(module).eval()
    for seq, conv_name, bn_name in _pairs(folded):
        conv, bn = seq._modules[conv_name], seq._modules[bn_name]
        assert conv is not None and bn is not None
        seq._modules[conv_name] = fuse_conv_bn_eval(cast(_ConvNd, conv), cast(_BatchNorm, bn))
        seq._modules[bn_name] = nn.Identity()
    return folded


class FoldedCache:
    """``fold_batchnorm(net)`` made once per state of ``net`` (and per ``key``, e.g. a domain
    whose batch-norm statistics are swapped in), remade when any parameter or buffer changed.

    A state is every parameter's and buffer's identity and in-place version counter, so an
    optimiser step, a running-statistics update, a checkpoint load or swapped statistics all make a
    fresh fold (:meth:`clear` covers what the counters miss). Tensors made in inference mode carry no version counter; then nothing is cached.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[tuple[int, int], ...], nn.Module]] = {}

    @staticmethod
    def _state(net: nn.Module) -> tuple[tuple[int, int], ...] | None:
        tensors = [*net.parameters(), *net.buffers()]
        if any(t.is_inference() for t in tensors):
            return None
        return tuple((id(t), t._version) for t in tensors)

    def get(self, net: nn.Module, key: str = "") -> nn.Module:
        """The folded copy of ``net`` as it is now."""
        state = self._state(net)
        entry = self._entries.get(key)
        if state is not None and entry is not None and entry[0] == state:
            return entry[1]
        folded = fold_batchnorm(net)
        if state is not None:
            self._entries[key] = (state, folded)
        return folded

    def clear(self) -> None:
        """Forget every fold. Weights copied in through ``.data`` (Lightning's weight averaging
        swaps the averaged weights in that way) leave the version counters as they were."""
        self._entries.clear()
