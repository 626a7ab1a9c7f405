"""Validation and test steps of a galda LightningModule: torchmetrics objects per stage and domain.

Eval batches are ``{"image", "index"[, "label"]}``, one loader per domain. Validation keeps accuracy
and loss (every epoch); the test stage has every metric of :data:`galda.metrics.METRIC_NAMES`.
Each step returns the domain's features and logits, which callbacks collect (validators,
test predictions).
"""

from __future__ import annotations

from typing import Any, cast

import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from galda.metrics import METRIC_NAMES, metric_collection
from galda.models.folding import FoldedCache
from galda.models.normaliser import DOMAINS

STAGES = ("val", "test")


def eval_metrics() -> tuple[nn.ModuleDict, nn.ModuleDict]:
    """(metric collections, mean losses), keyed ``{stage}_{domain}``, logged as
    ``{stage}/{domain}/{metric}`` and ``{stage}/{domain}/loss``."""
    metrics = nn.ModuleDict(
        {
            f"{s}_{d}": metric_collection(f"{s}/{d}/", ("acc",) if s == "val" else METRIC_NAMES)
            for s in STAGES
            for d in DOMAINS
        }
    )
    return metrics, nn.ModuleDict({f"{s}_{d}": MeanMetric() for s in STAGES for d in DOMAINS})


class EvaluationSteps(pl.LightningModule):
    """``validation_step`` / ``test_step`` for a module with ``net``, ``metrics`` and ``losses``."""

    net: Any
    metrics: nn.ModuleDict
    losses: nn.ModuleDict

    def __init__(self) -> None:
        super().__init__()
        # evaluation runs the network with batch norm folded into its convolutions (same function,
        # less work); one fold per domain and state of the weights, not one per batch
        self._folded = FoldedCache()

    def _domain(self, stage: str, dataloader_idx: int) -> str:
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        names = list(loaders) if isinstance(loaders, dict) else list(DOMAINS)
        return names[dataloader_idx]

    def _eval_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int) -> dict:
        domain = self._domain(stage, dataloader_idx)
        features, logits = self._folded.get(self.net, domain)(batch["image"])
        labels = batch.get("label")
        if labels is not None:
            key = f"{stage}_{domain}"
            # ModuleDict items are typed as Module; these hold the metrics of eval_metrics()
            metrics = cast(MetricCollection, self.metrics[key])
            mean_loss = cast(MeanMetric, self.losses[key])
            metrics.update(logits.softmax(1)[:, 1], labels)
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

    def on_validation_epoch_start(self) -> None:
        self._folded.clear()  # fold what this epoch evaluates (averaged weights may be swapped in)

    def on_test_epoch_start(self) -> None:
        self._folded.clear()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._eval_step("test", batch, dataloader_idx)
