"""Checkpoints written to a temporary name and renamed, so a run killed while saving never leaves a
truncated ``last.ckpt`` behind (Lightning writes the file in place); and a check that a checkpoint
about to be resumed from can be read (a copied, truncated or foreign file is named, with the
ways out)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from galda.errors import GaldaError
from galda.results import atomic_write_bytes
from galda.rng import restore_rng_state, rng_state

#: keys every Lightning checkpoint holds
CHECKPOINT_KEYS = ("state_dict", "epoch", "global_step")
RESUME_WAYS_OUT = "start over with resume=false, or delete the file"


class ResumableRun(pl.LightningModule):
    """What a checkpoint needs beyond Lightning's state for an exact resume: the RNG states (the
    DANN discriminator's dropout draws from the global generator) and the epoch budget the
    schedules were sized to (:func:`check_resume` refuses another)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["galda_rng"] = rng_state()
        checkpoint["galda_plan"] = {"max_epochs": int(self.trainer.max_epochs or -1)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("galda_rng") and self._trainer is not None:
            restore_rng_state(checkpoint["galda_rng"])


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


def check_checkpoint(path: str | os.PathLike, ways_out: str = RESUME_WAYS_OUT) -> dict[str, Any]:
    """Return the Lightning checkpoint at ``path``; raise GaldaError naming it when unusable.

    A missing, truncated, corrupt or non-Lightning file is reported with ``ways_out`` (for
    ``last.ckpt``: start over with ``resume=false``, or delete the file).
    """
    path = Path(path)
    if not path.is_file():
        raise GaldaError(f"{path}: checkpoint not found; {ways_out}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for a damaged file
        text = str(err).strip()
        # the first sentence: torch's zip reader appends a long note about miniz
        reason = text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__
        raise GaldaError(
            f"{path}: checkpoint is truncated or corrupt ({reason}); {ways_out}"
        ) from err
    keys = state.keys() if isinstance(state, dict) else ()
    missing = [k for k in CHECKPOINT_KEYS if k not in keys]
    if missing:
        raise GaldaError(
            f"{path}: not a Lightning checkpoint (no {', '.join(missing)}); {ways_out}"
        )
    return state


def check_resume(path: str | os.PathLike, max_epochs: int) -> None:
    """Refuse to resume from ``path`` when it is unreadable, or was written for another budget.

    The learning-rate cycle and the reversal ramp are sized to ``trainer.max_epochs``; continuing
    them under another budget would silently change the schedule.
    """
    state = check_checkpoint(path)
    planned = int(state.get("galda_plan", {}).get("max_epochs", max_epochs))
    if planned != int(max_epochs):
        raise GaldaError(
            f"{path} was written for trainer.max_epochs={planned}, not {max_epochs}: the learning-"
            f"rate cycle is sized to the budget; resume with trainer.max_epochs={planned}, or "
            "start over with resume=false"
        )
