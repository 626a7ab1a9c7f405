"""Training-step values of a galda LightningModule, logged the cheap way.

``<key>_epoch``: batch-weighted epoch means, kept in one :class:`galda.metrics.NamedMeans` update
per step and logged at the epoch's end; ``<key>_step``: the step's values, logged only on the
steps the logger writes (``trainer.log_every_n_steps``). Why not ``self.log(on_step=True,
on_epoch=True)`` per key: its Python cost per key and step was most of the package's per-step
overhead over a plain PyTorch loop on a GPU (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from torch import Tensor

from galda.metrics import NamedMeans


class TrainingLogs(pl.LightningModule):
    """``log_training(values, batch_size)`` for training steps; needs ``self.train_means``."""

    train_means: NamedMeans

    def log_training(self, values: Mapping[str, Tensor | float], batch_size: int) -> None:
        like = next(v for v in values.values() if isinstance(v, Tensor))
        # floats become device tensors by a fill, not a host-to-device copy (no synchronisation)
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
