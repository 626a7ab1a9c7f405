"""Optimiser, learning-rate schedule and training progress for a galda LightningModule."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def training_progress(trainer: pl.Trainer | None, global_step: int) -> float:
    """p = global_step / estimated_stepping_batches ∈ [0, 1], from Lightning's own counters."""
    if trainer is None:
        return 0.0
    total = trainer.estimated_stepping_batches
    if not total or total == float("inf"):
        return 0.0
    return min(1.0, global_step / float(total))


def configure_optimizers(
    module: nn.Module,
    groups: Iterable[dict],
    optimizer_factory: OptimizerFactory,
    scheduler_factory: SchedulerFactory | None,
    total_steps: Callable[[], int],
) -> Any:
    """Adam-style optimiser over parameter groups at ``lr × lr_mult``, with a per-step schedule.

    ``groups`` are ``{"params", "lr_mult", "name"}``; parameters of ``module`` in no group (e.g.
    the Fisher loss's class centres) form an ``other`` group at the base rate. The schedule is
    called with ``optimizer``, ``max_lr`` (per group) and ``total_steps()`` (asked only then).
    """
    groups = list(groups)
    seen = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in module.parameters() if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr_mult": 1.0, "name": "other"})
    keywords = getattr(optimizer_factory, "keywords", {}) or {}
    base_lr = float(keywords.get("lr", 1e-3))
    param_groups = [
        {
            "params": g["params"],
            "lr": base_lr * float(g.get("lr_mult", 1.0)),
            "name": g.get("name", f"group{i}"),
        }
        for i, g in enumerate(groups)
    ]
    optimizer = optimizer_factory(params=param_groups)
    if scheduler_factory is None:
        return optimizer
    # +1: OneCycleLR counts its initial step; ≥ 4 keeps both phases non-empty (fast_dev_run).
    scheduler = scheduler_factory(
        optimizer=optimizer,
        max_lr=[g["lr"] for g in param_groups],
        total_steps=max(int(total_steps()) + 1, 4),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
