"""Domain discriminator for DANN (paper §3.2, Eq. 4; architecture as in the authors' code)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DomainDiscriminator"]


class DomainDiscriminator(nn.Module):
    """Linear(F→H) → ReLU → Dropout → Linear(H→H) → ReLU → Dropout → Linear(H→1).

    Returns domain logits of shape (N,) (source = 1, target = 0). Feed it features that went
    through :func:`galda.losses.grad_reverse`. Parameters: F·H + H + H² + H + H + 1.
    """

    def __init__(self, in_features: int, hidden: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.reshape(len(features), -1)).squeeze(-1)
