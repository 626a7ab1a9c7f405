"""Domain-adversarial training (Ganin et al. 2016; paper Eq. 4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from galda.losses import domain_adversarial_loss, grad_reverse, reversal_coefficient
from galda.methods.base import MergerClassifier
from galda.models.discriminator import DomainDiscriminator


class DANNClassifier(MergerClassifier):
    """CE(source) + λ · BCE(D(GRL(features)), domain), source = 1, target = 0.

    The reversal coefficient follows ``schedule``: ``"constant"`` (= ``max_coefficient``, as the
    authors ran it) or ``"ganin"``: 2 / (1 + exp(−γ·p)) − 1, with training progress
    p = global_step / estimated_stepping_batches. The discriminator is a parameter group of its own
    at ``discriminator_lr_mult`` × the base rate (0.1 for DeepMerge, as the authors used), and it is
    always in the optimiser (the authors' final release left it out).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: str = "ganin",
        gamma: float = 10.0,
        max_coefficient: float = 1.0,
        discriminator_hidden: int = 1024,
        discriminator_dropout: float = 0.5,
        discriminator_lr_mult: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(net, **kwargs)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        reversal_coefficient(schedule, 0.0, gamma, max_coefficient)  # validates the name early
        self.schedule = schedule
        self.gamma = float(gamma)
        self.max_coefficient = float(max_coefficient)
        self.discriminator_lr_mult = float(discriminator_lr_mult)
        self.discriminator = DomainDiscriminator(
            net.feature_dim, hidden=discriminator_hidden, dropout=discriminator_dropout
        )

    @property
    def coefficient(self) -> float:
        return reversal_coefficient(self.schedule, self.progress, self.gamma, self.max_coefficient)

    def transfer_loss(self, source_features: Tensor, target_features: Tensor):
        coefficient = self.coefficient
        features = grad_reverse(torch.cat([source_features, target_features]), coefficient)
        domain_logits = self.discriminator(features)
        n_s = source_features.shape[0]
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
