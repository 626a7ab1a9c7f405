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

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from galda.losses import FisherLoss, entropy_loss
from galda.metrics import METRIC_NAMES, NamedMeans, metric_collection
from galda.models.normaliser import DOMAINS, DomainNormaliser
from galda.optim import (
    OptimizerFactory,
    SchedulerFactory,
    configure_optimizers,
    training_progress,
)
from galda.rng import restore_rng_state, rng_state

STAGES = ("val", "test")


class StepOutputs(NamedTuple):
    """What the network returns for one domain's batch."""

    features: Tensor
    logits: Tensor


class MergerClassifier(pl.LightningModule):
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
        if self.entropy_weight > 0:
            # entropy minimisation reads target predictions: a per-instance override of the class flag
            self.uses_target_images = True  # type: ignore[misc]
        self.fisher = FisherLoss(self.net.feature_dim) if self.fisher_weight > 0 else None
        self.normaliser = DomainNormaliser(int(self.net.in_channels))
        # Validation needs accuracy only (every epoch); the test stage gets the full set.
        self.metrics = nn.ModuleDict(
            {
                f"{s}_{d}": metric_collection(f"{s}/{d}/", ("acc",) if s == "val" else METRIC_NAMES)
                for s in STAGES
                for d in DOMAINS
            }
        )
        self.losses = nn.ModuleDict({f"{s}_{d}": MeanMetric() for s in STAGES for d in DOMAINS})
        self.train_means = NamedMeans()

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
        """One forward pass over source and target together (batch norm sees both domains)."""
        if x_t is None:
            return StepOutputs(*self.net(x_s)), None
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
            transfer, logs = self.transfer_loss(source_out, target_out)
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

    def log_training(self, values: Mapping[str, Tensor | float], batch_size: int) -> None:
        """``<key>_epoch``: batch-weighted epoch means (one metric update per step, logged at the
        epoch's end); ``<key>_step``: the step's values, on the steps the logger writes.

        Why not ``self.log(on_step, on_epoch)`` per key: its Python cost per key and step was
        about a third of the package's overhead over a plain loop (benchmarks/README.md).
        """
        like = next(v for v in values.values() if isinstance(v, Tensor))
        tensors = {
            k: v.detach() if isinstance(v, Tensor) else like.new_full((), float(v))
            for k, v in values.items()
        }
        self.train_means.update(tensors, weight=float(batch_size))
        trainer: Any = self.trainer  # log_every_n_steps and fast_dev_run are set at run time
        if trainer.fast_dev_run or (self.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0:
            self.log_dict(
                {f"{k}_step": v for k, v in tensors.items()}, on_step=True, on_epoch=False
            )

    def on_train_epoch_end(self) -> None:
        if self.train_means.update_count:
            means = self.train_means.compute()
            self.log_dict({f"{k}_epoch": v for k, v in means.items()}, on_epoch=True)
        self.train_means.reset()

    # -- evaluation -----------------------------------------------------------------------
    def _domain(self, stage: str, dataloader_idx: int) -> str:
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        names = list(loaders) if isinstance(loaders, dict) else list(DOMAINS)
        return names[dataloader_idx]

    def _eval_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int) -> dict:
        domain = self._domain(stage, dataloader_idx)
        features, logits = self.net(batch["image"])
        labels = batch.get("label")
        if labels is not None:
            key = f"{stage}_{domain}"
            probs = logits.softmax(1)[:, 1]
            # ModuleDict items are typed as Module; these hold the metrics built in __init__
            metrics = cast(MetricCollection, self.metrics[key])
            mean_loss = cast(MeanMetric, self.losses[key])
            metrics.update(probs, labels)
            mean_loss.update(F.cross_entropy(logits, labels, reduction="none"))
            self.log_dict(metrics, on_epoch=True, add_dataloader_idx=False)
            self.log(f"{stage}/{domain}/loss", mean_loss, on_epoch=True, add_dataloader_idx=False)
        return {
            "domain": domain,
            "features": features.detach(),
            "logits": logits.detach(),
            "labels": labels,
            "index": batch["index"],
        }

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._eval_step("test", batch, dataloader_idx)

    # -- checkpoints ----------------------------------------------------------------------
    # RNG states travel with checkpoints so that a resumed run continues exactly (dropout in
    # the DANN discriminator draws from the global generator).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["galda_rng"] = rng_state()
        # the budget the schedules were sized to: a resume must keep it (galda.checkpointing)
        checkpoint["galda_plan"] = {"max_epochs": int(self.trainer.max_epochs or -1)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("galda_rng") and self._trainer is not None:
            restore_rng_state(checkpoint["galda_rng"])

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        groups = list(self.net.parameter_groups()) + list(self.extra_parameter_groups())
        return configure_optimizers(
            self,
            groups,
            self.optimizer_factory,
            self.scheduler_factory,
            lambda: int(self.trainer.estimated_stepping_batches),
        )
