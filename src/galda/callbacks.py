"""Lightning callbacks of galda's own (the others are Lightning's, built from conf/callbacks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn

from galda.results import write_predictions


class PredictionWriter(pl.Callback):
    """Write the test-set predictions to ``<dirpath>/predictions.npz``.

    Keys per domain: ``{domain}_probs`` (P(merger)), ``{domain}_labels`` (absent for an
    unlabelled domain), ``{domain}_index`` (row in the domain file) and ``{domain}_galaxy_id``.
    Rows are sorted by file row, so they are the same whatever the process layout.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._outputs: dict[str, list[dict[str, torch.Tensor]]] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._outputs = {}
        self.arrays = {}

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        kept = {"probs": outputs["logits"].float().softmax(1)[:, 1], "index": outputs["index"]}
        if outputs.get("labels") is not None:
            kept["labels"] = outputs["labels"]
        self._outputs.setdefault(outputs["domain"], []).append(kept)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        arrays: dict[str, np.ndarray] = {}
        for domain, parts in self._outputs.items():
            for key in parts[0]:
                values = torch.cat([p[key] for p in parts])
                if trainer.world_size > 1:
                    # all_gather of a tensor returns a tensor; the stubs give the union of collections
                    values = cast(torch.Tensor, pl_module.all_gather(values)).reshape(-1)
                arrays[f"{domain}_{key}"] = values.cpu().numpy()
            # sorted by file row; rows padded twice by a distributed sampler are kept once
            _, order = np.unique(arrays[f"{domain}_index"], return_index=True)
            for key in parts[0]:
                arrays[f"{domain}_{key}"] = arrays[f"{domain}_{key}"][order]
            # Trainer sets ``datamodule`` in __init__ (its data connector); it is not declared on the class
            datamodule = getattr(trainer, "datamodule", None)
            ids = getattr(datamodule, "galaxy_ids", {}).get(domain)
            if ids is not None:
                arrays[f"{domain}_galaxy_id"] = ids[arrays[f"{domain}_index"]]
        self.arrays = arrays
        self._outputs = {}
        if trainer.is_global_zero:
            write_predictions(self.dirpath, arrays)


class WeightEMA(WeightAveraging):
    """Evaluate an exponential moving average of the weights instead of the last step's.

    After every optimiser step ``θ̄ ← θ̄ + (1 − d)(θ − θ̄)`` over every parameter and buffer of the
    module (Polyak & Juditsky 1992; the "EMA" of Tarvainen & Valpola 2017), with the decay ``d``
    sized to the run: ``1 − d = 1 / (horizon × planned steps)``, so the average spans the same
    fraction of training whatever the data size or budget (``horizon=0.05``: the last 5 %). Validation,
    checkpoint selection, the saved ``state_dict`` (so test, calibration and ``galda.predict``) all
    see θ̄; the raw weights keep training and are saved beside it for an exact resume.

    With per-domain batch norm the target's running statistics (kept beside the network, not as
    buffers: :mod:`galda.methods.domain_statistics`) are the running ones, not averaged; its own
    γ, β and stem are parameters and are averaged.

    Lightning's :class:`~pytorch_lightning.callbacks.WeightAveraging` does the bookkeeping. Two
    changes: a checkpoint loaded *outside* fitting (``trainer.test(ckpt_path=...)``) keeps the
    averaged weights in the module (Lightning's hook would load the raw ones back), and validation
    outside fitting evaluates the checkpoint as loaded (Lightning's would swap in the last average).
    """

    def __init__(self, horizon: float = 0.05, device: str | None = None) -> None:
        if not 0 < horizon <= 1:
            raise ValueError(f"horizon={horizon}: must be in (0, 1]")
        super().__init__(device=device, use_buffers=True, avg_fn=self._average)
        self.horizon = float(horizon)
        self.decay = 0.0

    def _average(
        self, averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor
    ) -> torch.Tensor:
        return averaged + (1.0 - self.decay) * (current - averaged)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = max(1.0, self.horizon * float(trainer.estimated_stepping_batches))
        self.decay = 1.0 - 1.0 / steps

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # trainer.validate(ckpt_path=...) after fit:
            super().on_validation_epoch_start(trainer, pl_module)  # the checkpoint's weights stay

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)
