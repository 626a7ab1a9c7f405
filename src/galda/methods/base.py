"""The shared merger classifier: the training step, optimiser, schedule and metrics.

Total loss (Ćiprijanović et al. 2020, Eq. 1)::

    L = CE(source) + λ · L_TL(source, target)
        [+ w_F · Fisher(source features)  + w_H · H(target predictions)]   (DeepMerge II)

A method subclass declares once, as class attributes, whether it trains on target images
(``uses_target_images``) and on target labels (``uses_target_labels``), and overrides only
:meth:`MergerClassifier.transfer_loss` (plus :meth:`extra_parameter_groups` when it owns
parameters that train at their own rate).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, cast

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from galda.checkpointing import ResumableRun
from galda.errors import ConfigError
from galda.losses import FisherLoss, entropy_loss
from galda.methods.domain_statistics import TargetStatistics
from galda.methods.evaluation import eval_metrics
from galda.methods.training_logs import TrainingLogs
from galda.metrics import NamedMeans
from galda.models.normaliser import DomainNormaliser
from galda.optim import (
    OptimizerFactory,
    SchedulerFactory,
    configure_optimizers,
    training_progress,
)

#: ``align``: which domains' features the transfer loss moves
ALIGN_MODES = ("both", "target")
#: ``domain_batchnorm``: shared batch norm, per-domain statistics, per-domain statistics and γ, β
DOMAIN_BATCHNORM = (False, True, "affine")


class StepOutputs(NamedTuple):
    """What the network returns for one domain's batch."""

    features: Tensor
    logits: Tensor

    def detached(self) -> StepOutputs:
        """The same outputs cut from the graph (a stop-gradient anchor for the transfer loss)."""
        return StepOutputs(self.features.detach(), self.logits.detach())


class MergerClassifier(TrainingLogs, TargetStatistics, ResumableRun):
    """Cross-entropy on labelled source images plus an optional transfer loss.

    Args:
        net: a network returning ``(features, logits)`` with ``feature_dim``, ``in_channels`` and
            ``parameter_groups()`` (``galda.models``), or its Hydra config (built here and kept in
            the hyper-parameters, so ``load_from_checkpoint(path)`` needs nothing else).
        optimizer: a partial optimiser (Hydra ``_partial_: true``), called with parameter groups.
        scheduler: a partial schedule, called with ``optimizer``, ``max_lr`` (per group) and
            ``total_steps``; stepped every batch. ``None`` for a constant rate.
        transfer_weight: λ in Eq. 1.
        fisher_weight: weight of DeepMerge II's Fisher loss on source features (0 = off).
        entropy_weight: weight of entropy minimisation on target predictions (0 = off).
        domain_batchnorm: normalise source and target batches separately, each domain with its own
            running statistics (:mod:`galda.methods.domain_statistics`); ``"affine"``: also its own
            batch-norm scale and shift (γ, β), as in Chang et al. 2019; ``False`` forwards both
            domains as one batch, as the authors did.
        align: ``"both"`` (the authors'): the transfer loss moves source and target features
            toward each other; ``"target"``: the source features enter the transfer loss detached
            (stop-gradient), so only the target's are moved toward the source's and the source
            representation is shaped by the classification loss alone.
        target_stem: the target's own first convolution (weights untied from the source's, both
            starting equal; Rozantsev et al. 2019 untie more), so the low-level part of a shift
            (noise, PSF, pixel scale) can be absorbed there; needs ``domain_batchnorm``.
    """

    #: the training step receives target images
    uses_target_images: ClassVar[bool] = True
    #: the training step receives target labels (only the ceiling rows)
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
    ) -> None:
        super().__init__()
        if isinstance(net, DictConfig):
            # plain dict in the checkpoint
            net = cast(dict[str, Any], OmegaConf.to_container(net, resolve=True))
        ignore = ["optimizer", "scheduler"] + (["net"] if isinstance(net, nn.Module) else [])
        self.save_hyperparameters(ignore=ignore)  # also collects the subclass's arguments
        # a galda.models network, duck-typed: feature_dim, in_channels and parameter_groups() are
        # plain attributes, which the typing of nn.Module.__getattr__ reports as Tensor | Module
        self.net: Any = cast(Any, net if isinstance(net, nn.Module) else instantiate(net))
        self.optimizer_factory = optimizer or functools.partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler
        self.transfer_weight = float(transfer_weight)
        self.fisher_weight = float(fisher_weight)
        self.entropy_weight = float(entropy_weight)
        if domain_batchnorm not in DOMAIN_BATCHNORM:
            raise ConfigError(
                f"method.module.domain_batchnorm={domain_batchnorm}: must be true, false or affine"
            )
        self.domain_batchnorm = bool(domain_batchnorm)
        if domain_batchnorm == "affine":
            self.init_target_affine()
        if target_stem:
            if not self.domain_batchnorm:
                raise ConfigError(
                    "method.module.target_stem=true forwards each domain on its own: set "
                    "method.module.domain_batchnorm=true or affine"
                )
            self.init_target_stem()
        if align not in ALIGN_MODES:
            raise ConfigError(
                f"method.module.align={align}: must be one of {', '.join(ALIGN_MODES)}"
            )
        self.align = align
        if self.entropy_weight > 0:
            # entropy minimisation reads target predictions: a per-instance override of the class flag
            self.uses_target_images = True  # type: ignore[misc]
        self.fisher = FisherLoss(self.net.feature_dim) if self.fisher_weight > 0 else None
        self.normaliser = DomainNormaliser(int(self.net.in_channels))
        self.metrics, self.losses = eval_metrics()  # galda.methods.evaluation
        self.train_means = NamedMeans()  # galda.methods.training_logs

    # -- the hooks subclasses override ----------------------------------------------------
    def transfer_loss(
        self, source: StepOutputs, target: StepOutputs
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Return ``(L_TL, extra values to log)``; the baseline has none."""
        return source.features.new_zeros(()), {}

    def extra_parameter_groups(self) -> list[dict]:
        """Parameter groups beyond the network's, with their ``lr_mult``."""
        return []

    # -- normalisation travels with the model (galda.models.normaliser) --------------------
    def set_normalisation(
        self,
        stats: Mapping[str, Mapping[str, Sequence[float]]],
        image_shape: Sequence[int] | None = None,
        bands: Sequence[str] | None = None,
    ) -> None:
        """Store the DataModule's per-domain training statistics and the input's shape/bands."""
        self.normaliser.set(stats, image_shape, bands)

    def normalise(self, x: Tensor, domain: str = "target") -> Tensor:
        """(x − mean_domain) / std_domain per channel, for raw images as stored in the files."""
        return self.normaliser(x, domain)

    # -- training -------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Training progress p ∈ [0, 1] (global step over the run's planned steps)."""
        return training_progress(self._trainer, self.global_step)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of normalised images."""
        return self.net(x)[1]

    def _forward_domains(
        self, x_s: Tensor, x_t: Tensor | None
    ) -> tuple[StepOutputs, StepOutputs | None]:
        """One forward pass over source and target together (batch norm sees both domains), or
        one per domain, each with its own batch-norm statistics (``domain_batchnorm``)."""
        if x_t is None:
            return StepOutputs(*self.net(x_s)), None
        if self.domain_batchnorm:
            source = StepOutputs(*self.net(x_s))
            with self.target_statistics(keep_updates=True):
                return source, StepOutputs(*self.net(x_t))
        features, logits = self.net(torch.cat([x_s, x_t]))
        n_s = x_s.shape[0]
        return (
            StepOutputs(features[:n_s], logits[:n_s]),
            StepOutputs(features[n_s:], logits[n_s:]),
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x_s, y_s = batch["source"]
        target = batch.get("target") if self.uses_target_images else None
        x_t, y_t = target if isinstance(target, (tuple, list)) else (target, None)
        source_out, target_out = self._forward_domains(x_s, x_t)
        terms: dict[str, tuple[float, Tensor]] = {
            "cls": (1.0, F.cross_entropy(source_out.logits, y_s))
        }
        logs: dict[str, Tensor | float] = {}
        if target_out is not None:
            anchor = source_out if self.align == "both" else source_out.detached()
            transfer, logs = self.transfer_loss(anchor, target_out)
            terms["transfer"] = (self.transfer_weight, transfer)
            if self.entropy_weight > 0:
                terms["entropy"] = (self.entropy_weight, entropy_loss(target_out.logits))
            if y_t is not None and self.uses_target_labels:
                terms["target_cls"] = (1.0, F.cross_entropy(target_out.logits, y_t))
        if self.fisher is not None:
            terms["fisher"] = (self.fisher_weight, self.fisher(source_out.features, y_s))
        loss = sum((w * v for w, v in terms.values()), start=torch.zeros((), device=self.device))
        self.log_training(
            {
                **{f"train/loss_{k}": v for k, (_, v) in terms.items()},
                **logs,
                "train/loss": loss,
                "train/source/acc": (source_out.logits.argmax(1) == y_s).float().mean(),
            },
            batch_size=x_s.shape[0],
        )
        return loss

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        groups = list(self.net.parameter_groups()) + list(self.extra_parameter_groups())
        if self.target_affine is not None:
            groups.append(
                {"params": list(self.target_affine), "lr_mult": 1.0, "name": "target_batchnorm"}
            )
        if self.target_stem is not None:
            groups.append({"params": list(self.target_stem), "lr_mult": 1.0, "name": "target_stem"})
        return configure_optimizers(
            self,
            groups,
            self.optimizer_factory,
            self.scheduler_factory,
            lambda: int(self.trainer.estimated_stepping_batches),
        )
