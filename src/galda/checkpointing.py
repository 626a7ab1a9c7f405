"""Checkpoints written to a temporary name and renamed, so a run killed while saving never leaves a
truncated ``last.ckpt`` behind (Lightning writes the file in place)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from galda.errors import GaldaError
from galda.results import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with an atomic save (temp file in the same folder, then rename)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())


def check_resume(path: str | os.PathLike, max_epochs: int) -> None:
    """Refuse to resume from ``path`` when it is unreadable, or was written for another budget.

    The learning-rate cycle and the reversal ramp are sized to ``trainer.max_epochs``; continuing
    them under another budget would silently change the schedule.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise GaldaError(
            f"{path}: cannot read the checkpoint to resume from ({type(err).__name__}); "
            "start over with resume=false, or delete the file"
        ) from err
    planned = int(state.get("galda_plan", {}).get("max_epochs", max_epochs))
    if planned != int(max_epochs):
        raise GaldaError(
            f"{path} was written for trainer.max_epochs={planned}, not {max_epochs}: the learning-"
            f"rate cycle is sized to the budget; resume with trainer.max_epochs={planned}, or "
            "start over with resume=false"
        )
