"""Per-domain input standardisation that travels with a trained model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

DOMAINS = ("source", "target")


class DomainNormaliser(nn.Module):
    """x ↦ (x − μ_d) / σ_d per channel, with μ_d, σ_d the training-split statistics of domain d.

    Buffers ``mean`` and ``std`` have shape (2, C), row 0 source, row 1 target; the input's
    ``image_shape`` and ``bands`` are kept as extra state. All of it is in the state dict, so in
    every checkpoint.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(len(DOMAINS), channels))
        self.register_buffer("std", torch.ones(len(DOMAINS), channels))
        self.info: dict[str, Any] = {"image_shape": None, "bands": None}

    def set(
        self,
        stats: Mapping[str, Mapping[str, Sequence[float]]],
        image_shape: Sequence[int] | None = None,
        bands: Sequence[str] | None = None,
    ) -> None:
        """Store ``{domain: {"mean": [...], "std": [...]}}`` and the input's shape and bands."""
        for row, domain in enumerate(DOMAINS):
            self.mean[row] = torch.as_tensor(stats[domain]["mean"], dtype=torch.float32)
            self.std[row] = torch.as_tensor(stats[domain]["std"], dtype=torch.float32)
        self.info = {
            "image_shape": list(image_shape) if image_shape else None,
            "bands": list(bands) if bands else None,
        }

    def forward(self, x: Tensor, domain: str = "target") -> Tensor:
        row = DOMAINS.index(domain)
        return (x - self.mean[row, :, None, None]) / self.std[row, :, None, None]

    def get_extra_state(self) -> dict[str, Any]:
        return dict(self.info)

    def set_extra_state(self, state: Any) -> None:
        self.info = dict(state or {})
