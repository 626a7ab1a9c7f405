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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MeanMetric

from galda.losses import FisherLoss, entropy_loss
from galda.metrics import METRIC_NAMES, metric_collection
from galda.rng import restore_rng_state, rng_state

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
DOMAINS = ("source", "target")
STAGES = ("val", "test")


class StepOutputs(NamedTuple):
    """What the network returns for one domain's batch."""

    features: Tensor
    logits: Tensor


class MergerClassifier(pl.LightningModule):
    """Cross-entropy on labelled source images plus an optional transfer loss.

    Args:
        net: a network returning ``(features, logits)`` with ``feature_dim``, ``in_channels`` and
            ``parameter_groups()`` (``galda.models``), or its Hydra config (then it is built here
            and stored in the hyper-parameters, so ``load_from_checkpoint(path)`` needs nothing else).
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
            net = OmegaConf.to_container(net, resolve=True)  # plain dict in the checkpoint
        ignore = ["optimizer", "scheduler"] + (["net"] if isinstance(net, nn.Module) else [])
        self.save_hyperparameters(ignore=ignore)  # also collects the subclass's arguments
        self.net = net if isinstance(net, nn.Module) else instantiate(net)
        self.optimizer_factory = optimizer or functools.partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler
        self.transfer_weight = float(transfer_weight)
        self.fisher_weight = float(fisher_weight)
        self.entropy_weight = float(entropy_weight)
        if self.entropy_weight > 0:
            self.uses_target_images = True  # entropy minimisation reads target predictions
        self.fisher = FisherLoss(self.net.feature_dim) if self.fisher_weight > 0 else None
        channels = int(self.net.in_channels)
        self.register_buffer("norm_mean", torch.zeros(len(DOMAINS), channels))
        self.register_buffer("norm_std", torch.ones(len(DOMAINS), channels))
        self.input_info: dict[str, Any] = {}  # image_shape, bands: set from the data
        # Validation needs accuracy only (every epoch); the test stage gets the full set.
        self.metrics = nn.ModuleDict({
            f"{s}_{d}": metric_collection(f"{s}/{d}/", ("acc",) if s == "val" else METRIC_NAMES)
            for s in STAGES for d in DOMAINS
        })
        self.losses = nn.ModuleDict({f"{s}_{d}": MeanMetric() for s in STAGES for d in DOMAINS})

    # -- the hooks subclasses override ----------------------------------------------------
    def transfer_loss(
        self, source: StepOutputs, target: StepOutputs
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Return ``(L_TL, extra values to log)``; the baseline has none."""
        return source.features.new_zeros(()), {}

    def extra_parameter_groups(self) -> list[dict]:
        """Parameter groups beyond the network's, with their ``lr_mult``."""
        return []

    def supervised_target_loss(self, target: StepOutputs, labels: Tensor) -> Tensor:
        """Loss on labelled target images: only methods with ``uses_target_labels`` call it."""
        return F.cross_entropy(target.logits, labels)

    # -- normalisation travels with the model ---------------------------------------------
    def set_normalisation(
        self,
        stats: Mapping[str, Mapping[str, Sequence[float]]],
        image_shape: Sequence[int] | None = None,
        bands: Sequence[str] | None = None,
    ) -> None:
        """Store per-domain training-split ``{"mean", "std"}`` and the input's shape and bands."""
        for row, domain in enumerate(DOMAINS):
            self.norm_mean[row] = torch.as_tensor(stats[domain]["mean"], dtype=torch.float32)
            self.norm_std[row] = torch.as_tensor(stats[domain]["std"], dtype=torch.float32)
        self.input_info = {"image_shape": list(image_shape) if image_shape else None,
                           "bands": list(bands) if bands else None}

    # Saved in the state dict (so in every checkpoint) beside the normalisation buffers.
    def get_extra_state(self) -> dict[str, Any]:
        return dict(self.input_info)

    def set_extra_state(self, state: Any) -> None:
        self.input_info = dict(state or {})

    def normalise(self, x: Tensor, domain: str = "target") -> Tensor:
        """(x − mean_domain) / std_domain per channel, for raw images as stored in the files."""
        row = DOMAINS.index(domain)
        return (x - self.norm_mean[row, :, None, None]) / self.norm_std[row, :, None, None]

    # -- training -------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Training progress p ∈ [0, 1] from Lightning's own counters (no hidden state)."""
        trainer = self._trainer
        if trainer is None:
            return 0.0
        total = trainer.estimated_stepping_batches
        if not total or total == float("inf"):
            return 0.0
        return min(1.0, self.global_step / float(total))

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
        y_t = None
        if isinstance(target, (tuple, list)):
            target, y_t = target
        source_out, target_out = self._forward_domains(x_s, target)

        loss_cls = F.cross_entropy(source_out.logits, y_s)
        loss = loss_cls
        logs: dict[str, Tensor | float] = {"train/loss_cls": loss_cls}
        if target_out is not None:
            loss_transfer, extra = self.transfer_loss(source_out, target_out)
            loss = loss + self.transfer_weight * loss_transfer
            logs["train/loss_transfer"] = loss_transfer
            logs.update(extra)
            if self.entropy_weight > 0:
                loss_entropy = entropy_loss(target_out.logits)
                loss = loss + self.entropy_weight * loss_entropy
                logs["train/loss_entropy"] = loss_entropy
            if y_t is not None and type(self).uses_target_labels:
                loss_target = self.supervised_target_loss(target_out, y_t)
                loss = loss + loss_target
                logs["train/loss_target_cls"] = loss_target
        if self.fisher is not None:
            loss_fisher = self.fisher(source_out.features, y_s)
            loss = loss + self.fisher_weight * loss_fisher
            logs["train/loss_fisher"] = loss_fisher
        logs["train/loss"] = loss
        logs["train/source/acc"] = (source_out.logits.argmax(1) == y_s).float().mean()
        # Lightning keeps the epoch means on the device; per-step values reach the logger
        # every ``log_every_n_steps``.
        self.log_dict({k: torch.as_tensor(v).detach() for k, v in logs.items()},
                      on_step=True, on_epoch=True, batch_size=x_s.shape[0])
        return loss

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
            self.metrics[key].update(probs, labels)
            self.losses[key].update(F.cross_entropy(logits, labels, reduction="none"))
            self.log_dict(self.metrics[key], on_epoch=True, add_dataloader_idx=False)
            self.log(f"{stage}/{domain}/loss", self.losses[key], on_epoch=True,
                     add_dataloader_idx=False)
        return {"domain": domain, "features": features.detach(), "logits": logits.detach(),
                "labels": labels, "index": batch["index"]}

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
        seen = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in self.parameters() if id(p) not in seen]
        if rest:  # e.g. the Fisher loss's class centres
            groups.append({"params": rest, "lr_mult": 1.0, "name": "other"})
        keywords = getattr(self.optimizer_factory, "keywords", {}) or {}
        base_lr = float(keywords.get("lr", 1e-3))
        param_groups = [
            {"params": g["params"], "lr": base_lr * float(g.get("lr_mult", 1.0)),
             "name": g.get("name", f"group{i}")}
            for i, g in enumerate(groups)
        ]
        optimizer = self.optimizer_factory(params=param_groups)
        if self.scheduler_factory is None:
            return optimizer
        # +1: OneCycleLR counts its initial step; ≥ 4 keeps both phases non-empty (fast_dev_run).
        total = max(int(self.trainer.estimated_stepping_batches) + 1, 4)
        scheduler = self.scheduler_factory(
            optimizer=optimizer, max_lr=[g["lr"] for g in param_groups], total_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
