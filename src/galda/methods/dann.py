"""Domain-adversarial training (Ganin et al. 2016; paper Eq. 4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from galda.losses import domain_adversarial_loss, grad_reverse, reversal_coefficient
from galda.methods.base import MergerClassifier, OptimizerFactory, SchedulerFactory, StepOutputs
from galda.models.discriminator import DomainDiscriminator


class DANNClassifier(MergerClassifier):
    """CE(source) + λ · BCE(D(GRL(features)), domain), source = 1, target = 0.

    The reversal coefficient follows ``schedule``: ``"constant"`` (= ``max_coefficient``, as the
    authors ran it) or ``"ganin"``: 2 / (1 + exp(−γ·p)) − 1, with training progress
    p = global_step / estimated_stepping_batches. The discriminator is a parameter group of its own
    at ``discriminator_lr_mult`` × the base rate, always in the optimiser (the authors' final
    release left it out). (Other arguments: :class:`~galda.methods.base.MergerClassifier`.)
    """

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
        schedule: str = "ganin",
        gamma: float = 10.0,
        max_coefficient: float = 1.0,
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
        reversal_coefficient(schedule, 0.0, gamma, max_coefficient)  # validates the name early
        self.schedule = schedule
        self.gamma = float(gamma)
        self.max_coefficient = float(max_coefficient)
        self.discriminator_lr_mult = float(discriminator_lr_mult)
        self.discriminator = DomainDiscriminator(
            self.net.feature_dim, hidden=discriminator_hidden, dropout=discriminator_dropout
        )

    @property
    def coefficient(self) -> float:
        return reversal_coefficient(self.schedule, self.progress, self.gamma, self.max_coefficient)

    def transfer_loss(
        self, source: StepOutputs, target: StepOutputs
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        coefficient = self.coefficient
        features = grad_reverse(torch.cat([source.features, target.features]), coefficient)
        domain_logits = self.discriminator(features)
        n_s = source.features.shape[0]
        loss, domain_acc = domain_adversarial_loss(domain_logits[:n_s], domain_logits[n_s:])
        return loss, {"train/domain_acc": domain_acc, "train/grl_coefficient": coefficient}

    def extra_parameter_groups(self) -> list[dict]:
        return [
            {
                "params": list(self.discriminator.parameters()),
                "lr_mult": self.discriminator_lr_mult,
                "name": "discriminator",
            }
        ]
