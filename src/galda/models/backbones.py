"""Merger-classifier networks. Each returns ``(features, logits)``.

``features`` is the layer the transfer losses act on (FACTS.md, "Architectures as the authors
built them"); ``parameter_groups()`` tells the optimiser which parameters train at a multiple of
the base learning rate.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet18


class DeepMerge(nn.Module):
    """DeepMerge CNN (Ćiprijanović et al. 2020, Astron. Comput. 32, 100390).

    Three Conv-BN-ReLU-MaxPool blocks (8, 16, 32 filters; 5×5 then 3×3 kernels; built as
    Conv-BN-MaxPool-ReLU, the same function with less work) → flatten
    (32·9·9 = 2,592 features for 75×75 input) → Dense 64 → Dense 32 → 2 logits.
    174,626 trainable parameters for 3×75×75 input.

    ``feature_layer`` is the layer the transfer losses read: ``"flatten"`` (the authors', 2,592-d)
    or ``"penultimate"`` (the 32-d output of the last hidden dense layer, after its ReLU, as
    Transfer-Learning-Library aligns a bottleneck). Matching the two domains' distributions on the
    last hidden layer leaves the convolutional features free to differ between the domains.

    ``width`` multiplies the three convolutions' filters (1: the authors' 8, 16, 32; 2: 16, 32, 64
    and a 5,184-d flatten layer); the dense layers keep their sizes.
    """

    FEATURE_LAYERS = ("flatten", "penultimate")

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 75,
        n_classes: int = 2,
        feature_layer: str = "flatten",
        width: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"model.net.width={width}: must be a whole number of at least 1")
        if feature_layer not in self.FEATURE_LAYERS:
            raise ValueError(
                f"model.net.feature_layer={feature_layer}: must be one of "
                + ", ".join(self.FEATURE_LAYERS)
            )
        self.in_channels = in_channels
        self.feature_layer = feature_layer

        def block(c_in: int, c_out: int, k: int) -> list[nn.Module]:
            # the authors' Conv-BN-ReLU-MaxPool with the pooling first: max and ReLU commute
            # exactly (ReLU is monotone), so outputs and gradients are bit for bit the same and the
            # ReLU touches a quarter of the values; the parameters keep their names
            return [
                nn.Conv2d(c_in, c_out, k, padding=k // 2),
                nn.BatchNorm2d(c_out),
                nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
            ]

        c1, c2, c3 = 8 * width, 16 * width, 32 * width
        self.features = nn.Sequential(
            *block(in_channels, c1, 5), *block(c1, c2, 3), *block(c2, c3, 3), nn.Flatten()
        )
        side = image_size
        for _ in range(3):
            side //= 2
        flat_dim = c3 * side * side
        self.head = nn.Sequential(
            nn.Linear(flat_dim, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 32),
            nn.ReLU(inplace=True),
            nn.Linear(32, n_classes),
        )
        self.feature_dim = flat_dim if feature_layer == "flatten" else 32

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x)
        if self.feature_layer == "flatten":
            return f, self.head(f)
        hidden = self.head[:-1](f)
        return hidden, self.head[-1](hidden)

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.parameters()), "lr_mult": 1.0, "name": "net"}]


class ResNet18Merger(nn.Module):
    """torchvision ResNet18 from scratch + 256-d linear bottleneck (feature layer) + linear head.

    Unchanged stem; 75×75 input leaves a 3×3 final map, average-pooled to 512. Bottleneck and
    head train at ``head_lr_mult`` × the backbone learning rate (10× as the authors did).
    """

    def __init__(
        self,
        in_channels: int = 3,
        bottleneck_dim: int = 256,
        n_classes: int = 2,
        head_lr_mult: float = 10.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        backbone = resnet18(weights=None)
        if in_channels != 3:
            backbone.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        width = backbone.fc.in_features
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.bottleneck = nn.Linear(width, bottleneck_dim)
        self.head = nn.Linear(bottleneck_dim, n_classes)
        self.feature_dim = bottleneck_dim
        self.head_lr_mult = head_lr_mult

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.bottleneck(self.backbone(x))
        return f, self.head(f)

    def parameter_groups(self) -> list[dict]:
        return [
            {"params": list(self.backbone.parameters()), "lr_mult": 1.0, "name": "backbone"},
            {
                "params": list(self.bottleneck.parameters()) + list(self.head.parameters()),
                "lr_mult": self.head_lr_mult,
                "name": "bottleneck+head",
            },
        ]


class TinyNet(nn.Module):
    """A few-thousand-parameter CNN for fast tests (same interface as the real networks)."""

    def __init__(self, in_channels: int = 3, n_classes: int = 2, width: int = 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.feature_dim = width * 16
        self.head = nn.Linear(self.feature_dim, n_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x)
        return f, self.head(f)

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.parameters()), "lr_mult": 1.0, "name": "net"}]


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["DeepMerge", "ResNet18Merger", "TinyNet", "count_trainable"]
