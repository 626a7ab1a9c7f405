"""Networks: feature extractors with classification heads, and the domain discriminator."""

from galda.models.backbones import DeepMerge, ResNet18Merger, TinyNet, count_trainable

__all__ = ["DeepMerge", "ResNet18Merger", "TinyNet", "count_trainable"]
