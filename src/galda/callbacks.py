"""Lightning callbacks of galda's own (the others are Lightning's, built from conf/callbacks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch

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
