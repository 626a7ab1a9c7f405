"""A compact progress line per validation epoch, for sweeps whose jobs run side by side.

Progress bars of parallel jobs overwrite each other, so sweeps switch them off; this callback
keeps one readable line per job and epoch on the ``galda`` logger instead, e.g.::

    [method=dann] epoch 3/20  val/source/acc=0.812 val/source/loss=0.431  (11.9 s/epoch, 36 s)
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger("galda")


def _hydra_label() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return str(hc.job.override_dirname or f"job {hc.job.num}")
        return Path(str(hc.runtime.output_dir)).name
    except Exception:  # noqa: BLE001 - not under Hydra, or its runtime fields are unset
        return None


def job_label(trainer: pl.Trainer | None = None) -> str:
    """The job's name: Hydra's override folder name in a sweep, else the run folder's name."""
    label = _hydra_label()
    if label:
        return label
    root = getattr(trainer, "default_root_dir", None) if trainer is not None else None
    return Path(root).name if root else "run"


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class EpochProgress(pl.Callback):
    """Log ``[job] epoch e/max  val/...=x ...  (s/epoch, elapsed)`` after each validation.

    Args:
        job: the label in brackets; None → :func:`job_label` (Hydra's override folder name).
        prefix: which logged metrics to show (those whose key starts with it).
    """

    def __init__(self, job: str | None = None, prefix: str = "val/") -> None:
        self.job = job
        self.prefix = prefix
        self._t0 = 0.0
        self._first_epoch = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.job is None:
            self.job = job_label(trainer)
        self._t0 = time.monotonic()
        self._first_epoch = int(trainer.current_epoch)  # > 0 when resumed

    def line(self, trainer: pl.Trainer) -> str:
        """The progress line for the epoch that just finished validating."""
        epoch = int(trainer.current_epoch) + 1
        max_epochs = trainer.max_epochs
        total = f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else ""
        metrics: dict[str, Any] = trainer.callback_metrics
        shown = " ".join(
            f"{k}={_fmt(float(v))}"
            for k, v in sorted(metrics.items())
            if k.startswith(self.prefix) and getattr(v, "numel", lambda: 1)() == 1
        )
        elapsed = time.monotonic() - self._t0
        done = max(1, epoch - self._first_epoch)
        return (
            f"[{self.job}] epoch {epoch}{total}  {shown or '(no metrics yet)'}  "
            f"({elapsed / done:.1f} s/epoch, {_duration(elapsed)})"
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # training epochs only: not the sanity check, nor train()'s re-validation of the best epoch
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        log.info("%s", self.line(trainer))
