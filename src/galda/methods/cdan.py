"""Conditional domain-adversarial training: CDAN and CDAN+E (Long et al. 2018, NeurIPS)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from galda.errors import GaldaError
from galda.losses import (
    CDAN_RANDOMIZED_THRESHOLD,
    REVERSAL_SCHEDULES,
    ConditionalMap,
    entropy_weights,
    grad_reverse,
    reversal_coefficient,
    weighted_domain_adversarial_loss,
)
from galda.methods.base import MergerClassifier, OptimizerFactory, SchedulerFactory, StepOutputs
from galda.models.discriminator import DomainDiscriminator


class CDANClassifier(MergerClassifier):
    """CE(source) + λ · BCE(D(GRL(T(f, g))), domain), source = 1, target = 0.

    T(f, g) is the multilinear map f ⊗ g of features and softmax class probabilities, or its
    randomised version (``randomized_dim`` outputs) when feature_dim × n_classes exceeds
    ``randomized_threshold`` (DeepMerge: 2,592 × 2 → randomised). g is not detached: the
    reversed gradient reaches the classifier through the conditioning as well as through f.
    With ``entropy_conditioning`` (CDAN+E) each sample's discriminator loss is weighted by
    1 + exp(−H(g)), normalised per domain. Gradient reversal, its schedule and the discriminator
    (and its learning-rate multiple) are DANN's.
    """

    uses_target_images: ClassVar[bool] = True
    uses_target_labels: ClassVar[bool] = False

    def __init__(
        self,
        net: nn.Module | Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        transfer_weight: float = 1.0,
        fisher_weight: float = 0.0,
        entropy_weight: float = 0.0,
        domain_batchnorm: bool | str = False,
        align: str = "both",
        target_stem: bool = False,
        entropy_conditioning: bool = True,
        schedule: str = "ganin",
        gamma: float = 10.0,
        max_coefficient: float = 1.0,
        randomized_threshold: int = CDAN_RANDOMIZED_THRESHOLD,
        randomized_dim: int = 1024,
        discriminator_hidden: int = 1024,
        discriminator_dropout: float = 0.5,
        discriminator_lr_mult: float = 1.0,
    ) -> None:
        super().__init__(
            net,
            optimizer,
            scheduler,
            transfer_weight,
            fisher_weight,
            entropy_weight,
            domain_batchnorm,
            align,
            target_stem,
        )
        if schedule not in REVERSAL_SCHEDULES:
            raise GaldaError(
                f"method.module.schedule={schedule!r} is unknown; use one of {REVERSAL_SCHEDULES}"
            )
        if randomized_dim < 1:
            raise GaldaError(f"method.module.randomized_dim={randomized_dim} must be >= 1")
        self.entropy_conditioning = bool(entropy_conditioning)
        self.schedule = schedule
        self.gamma = float(gamma)
        self.max_coefficient = float(max_coefficient)
        self.discriminator_lr_mult = float(discriminator_lr_mult)
        n_classes = int(getattr(self.net, "n_classes", 2))
        self.conditional_map = ConditionalMap(
            self.net.feature_dim, n_classes, randomized_threshold, randomized_dim
        )
        self.discriminator = DomainDiscriminator(
            self.conditional_map.output_dim,
            hidden=discriminator_hidden,
            dropout=discriminator_dropout,
        )

    @property
    def coefficient(self) -> float:
        return reversal_coefficient(self.schedule, self.progress, self.gamma, self.max_coefficient)

    def transfer_loss(
        self, source: StepOutputs, target: StepOutputs
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        coefficient = self.coefficient
        n_s = len(source.features)
        features = torch.cat([source.features, target.features])
        probs = torch.cat([source.logits, target.logits]).softmax(dim=1)
        mapped = grad_reverse(self.conditional_map(features, probs), coefficient)
        domain_logits = self.discriminator(mapped)
        weights_s = weights_t = None
        if self.entropy_conditioning:
            weights = entropy_weights(probs.float())
            weights_s, weights_t = weights[:n_s], weights[n_s:]
        loss, domain_acc = weighted_domain_adversarial_loss(
            domain_logits[:n_s], domain_logits[n_s:], weights_s, weights_t
        )
        return loss, {
            "train/domain_acc": domain_acc,
            "train/grl_coefficient": coefficient,
        }

    def extra_parameter_groups(self) -> list[dict]:
        return [
            {
                "params": list(self.discriminator.parameters()),
                "lr_mult": self.discriminator_lr_mult,
                "name": "discriminator",
            }
        ]
