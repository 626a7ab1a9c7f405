"""The shared merger classifier: the training loop, optimiser, schedule and metrics.

Total loss (Ćiprijanović et al. 2020, Eq. 1)::

    L = CE(source) + λ · L_TL(source features, target features)
        [+ w_F · Fisher(source features)  + w_H · H(target predictions)]   (DeepMerge II)

Subclasses override only :meth:`MergerClassifier.transfer_loss` (and, when they own parameters
that train at their own rate, :meth:`MergerClassifier.extra_parameter_groups`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galda.losses import FisherLoss, entropy_loss
from galda.metrics import binary_confusion, binary_metrics

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class MergerClassifier(pl.LightningModule):
    """Cross-entropy on labelled source images plus an optional transfer loss.

    Args:
        net: a network returning ``(features, logits)`` with ``feature_dim`` and
            ``parameter_groups()`` (see ``galda.models``).
        optimizer: a partial optimiser (Hydra ``_partial_: true``), called with parameter groups.
        scheduler: a partial one-cycle schedule, called with ``optimizer``, ``max_lr`` (per group)
            and ``total_steps``; stepped every batch. ``None`` for a constant rate.
        transfer_weight: λ in Eq. 1.
        fisher_weight: weight of DeepMerge II's Fisher loss on source features (0 = off).
        entropy_weight: weight of entropy minimisation on target predictions (0 = off).
    """

    #: whether the transfer loss needs target images in the training step
    uses_target: ClassVar[bool] = True
    #: whether the method trains on target labels (only the labelled ``oracle`` does)
    uses_target_labels: ClassVar[bool] = False

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        transfer_weight: float = 1.0,
        fisher_weight: float = 0.0,
        entropy_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer or functools.partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler
        self.transfer_weight = float(transfer_weight)
        self.fisher_weight = float(fisher_weight)
        self.entropy_weight = float(entropy_weight)
        self.fisher = FisherLoss(net.feature_dim) if self.fisher_weight > 0 else None
        self._eval_outputs: dict[str, dict[str, list[Tensor]]] = {}
        self._train_sums: dict[str, Tensor] = {}
        self._train_steps = 0
        self.test_results: dict[str, Any] = {}
        self.test_predictions: dict[str, np.ndarray] = {}

    # -- the hook subclasses override -----------------------------------------------------
    def transfer_loss(
        self, source_features: Tensor, target_features: Tensor
    ) -> tuple[Tensor, dict[str, float | Tensor]]:
        """Return ``(L_TL, extra values to log)``; the baseline has none."""
        return source_features.new_zeros(()), {}

    def extra_parameter_groups(self) -> list[dict]:
        """Parameter groups beyond the network's, with their ``lr_mult``."""
        return []

    # -- training -------------------------------------------------------------------------
    @property
    def needs_target_batch(self) -> bool:
        return type(self).uses_target or self.entropy_weight > 0

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
        """Class logits."""
        return self.net(x)[1]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x_s, y_s = batch["source"]
        n_s = x_s.shape[0]
        target = batch.get("target")
        if self.needs_target_batch:
            x_t = target[0] if isinstance(target, (tuple, list)) else target
            features, logits = self.net(torch.cat([x_s, x_t]))
            f_s, f_t = features[:n_s], features[n_s:]
            logits_s, logits_t = logits[:n_s], logits[n_s:]
        else:
            f_s, logits_s = self.net(x_s)
            f_t = logits_t = None

        loss_cls = F.cross_entropy(logits_s, y_s)
        loss = loss_cls
        logs: dict[str, Any] = {"train/loss_cls": loss_cls}
        if type(self).uses_target:
            loss_transfer, extra = self.transfer_loss(f_s, f_t)
            loss = loss + self.transfer_weight * loss_transfer
            logs["train/loss_transfer"] = loss_transfer
            logs.update(extra)
        if self.fisher is not None:
            loss_fisher = self.fisher(f_s, y_s)
            loss = loss + self.fisher_weight * loss_fisher
            logs["train/loss_fisher"] = loss_fisher
        if self.entropy_weight > 0:
            loss_entropy = entropy_loss(logits_t)
            loss = loss + self.entropy_weight * loss_entropy
            logs["train/loss_entropy"] = loss_entropy
        loss = loss + self.supervised_target_loss(logits_t, target)
        logs["train/loss"] = loss
        logs["train/source/acc"] = (logits_s.argmax(1) == y_s).float().mean()
        self._log_training(logs)
        return loss

    def _log_training(self, logs: dict[str, Any]) -> None:
        """Per-step values every ``log_every_n_steps`` steps; epoch means at the epoch's end.

        Sums are kept as detached tensors on the device, so a step costs no host sync and no pass
        through Lightning's per-key logging machinery (several ms a step on a GPU).
        """
        values = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device).detach()
                  for k, v in logs.items()}
        for key, value in values.items():
            self._train_sums[key] = self._train_sums.get(key, 0.0) + value
        self._train_steps += 1
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 50) or 50))
        if (self.global_step + 1) % every == 0:
            self.log_dict({f"{k}_step": v for k, v in values.items()}, on_step=True, on_epoch=False)

    def on_train_epoch_start(self) -> None:
        self._train_sums: dict[str, Tensor] = {}
        self._train_steps = 0

    def on_train_epoch_end(self) -> None:
        if self._train_steps:
            self.log_dict({f"{k}_epoch": v / self._train_steps for k, v in self._train_sums.items()},
                          on_step=False, on_epoch=True)

    def supervised_target_loss(self, logits_t: Tensor | None, target: Any) -> Tensor:
        """Only the oracle uses target labels; every other method adds nothing."""
        return torch.zeros((), device=self.device)

    # -- evaluation -----------------------------------------------------------------------
    def _domain_names(self, stage: str) -> list[str]:
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        if isinstance(loaders, dict):
            return list(loaders)
        return ["source", "target"]

    def _eval_step(self, stage: str, batch: Any, dataloader_idx: int) -> None:
        x, y = batch
        domain = self._domain_names(stage)[dataloader_idx]
        logits = self(x)
        store = self._eval_outputs.setdefault(domain, {"probs": [], "labels": [], "loss": []})
        store["probs"].append(logits.softmax(1)[:, 1].detach().float())
        store["labels"].append(y.detach())
        store["loss"].append(F.cross_entropy(logits, y, reduction="sum").detach())

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def _gathered(self) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        out = {}
        for domain, store in self._eval_outputs.items():
            probs = torch.cat(store["probs"])
            labels = torch.cat(store["labels"])
            loss = torch.stack(store["loss"]).sum()
            if self.trainer.world_size > 1:
                probs = self.all_gather(probs).reshape(-1)
                labels = self.all_gather(labels).reshape(-1)
                loss = self.all_gather(loss).sum()
            out[domain] = (probs, labels, loss / max(1, labels.numel()))
        self._eval_outputs = {}
        return out

    def on_validation_epoch_start(self) -> None:
        self._eval_outputs = {}

    def on_test_epoch_start(self) -> None:
        self._eval_outputs = {}

    def on_validation_epoch_end(self) -> None:
        for domain, (probs, labels, loss) in self._gathered().items():
            acc = ((probs > 0.5).long() == labels).float().mean()
            self.log(f"val/{domain}/acc", acc, sync_dist=False, rank_zero_only=False)
            self.log(f"val/{domain}/loss", loss, sync_dist=False, rank_zero_only=False)

    def on_test_epoch_end(self) -> None:
        results: dict[str, Any] = {"confusion": {}}
        predictions: dict[str, np.ndarray] = {}
        for domain, (probs, labels, _) in self._gathered().items():
            metrics = binary_metrics(probs.cpu(), labels.cpu())
            for name, value in metrics.items():
                results[f"test/{domain}/{name}"] = value
                self.log(f"test/{domain}/{name}", float(value), sync_dist=False)
            results["confusion"][domain] = binary_confusion(probs.cpu(), labels.cpu())
            predictions[f"{domain}_probs"] = probs.cpu().numpy()
            predictions[f"{domain}_labels"] = labels.cpu().numpy()
        self.test_results = results
        self.test_predictions = predictions

    # -- checkpoints ----------------------------------------------------------------------
    # RNG states travel with checkpoints so that a resumed run continues exactly (dropout in
    # the DANN discriminator draws from the global generator).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        import random

        checkpoint["galda_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        import random

        state = checkpoint.get("galda_rng")
        if not state:
            return
        torch.set_rng_state(state["torch"])
        np.random.set_state(_numpy_state_from_plain(state["numpy"]))
        random.setstate(state["python"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

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


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    """NumPy's RNG state as tensors and numbers, loadable with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_plain(plain: dict[str, Any]) -> tuple:
    keys = plain["keys"].numpy().astype(np.uint32)
    return (plain["name"], keys, plain["pos"], plain["has_gauss"], plain["cached"])
