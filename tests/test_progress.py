"""galda.progress.EpochProgress: one compact line per validation epoch on the `galda` logger."""

from __future__ import annotations

import logging
import re

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from galda.progress import EpochProgress, job_label


@pytest.fixture(autouse=True)
def _outside_hydra():
    """Tests composing configs leave a HydraConfig behind; these tests run outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    saved = HydraConfig.instance().cfg
    HydraConfig.instance().cfg = None
    yield
    HydraConfig.instance().cfg = saved


class _Tiny(pl.LightningModule):
    """Logistic regression logging val/source/acc and val/source/loss like the real module."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.lin(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        logits = self.lin(x)
        self.log("val/source/loss", nn.functional.cross_entropy(logits, y))
        self.log("val/source/acc", (logits.argmax(1) == y).float().mean())
        self.log("train_only", 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_one_line_per_epoch(tmp_path, caplog):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        default_root_dir=tmp_path / "myjob",
        callbacks=[EpochProgress()],
    )
    with caplog.at_level(logging.INFO, logger="galda"):
        trainer.fit(_Tiny(), loader, loader)
    lines = [r.getMessage() for r in caplog.records if r.name == "galda"]
    assert len(lines) == 3  # no line for the sanity check
    for epoch, line in enumerate(lines, start=1):
        m = re.fullmatch(
            r"\[myjob\] epoch (\d)/3  val/source/acc=(\S+) val/source/loss=(\S+)  "
            r"\((\S+) s/epoch, \d+ s\)",
            line,
        )
        assert m, line
        assert int(m.group(1)) == epoch and 0 <= float(m.group(2)) <= 1
        assert float(m.group(3)) > 0 and float(m.group(4)) >= 0
        assert "train_only" not in line
    final = trainer.callback_metrics
    assert f"val/source/acc={float(final['val/source/acc']):.3f}" in lines[-1]


def test_job_label_outside_hydra(tmp_path):
    class T:
        default_root_dir = str(tmp_path / "run-7")

    assert job_label(T()) == "run-7"
    assert job_label(None) == "run"
