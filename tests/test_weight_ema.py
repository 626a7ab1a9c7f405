"""``galda.callbacks.WeightEMA`` against a plain exponential moving average of the weights, and what
each stage after fitting evaluates (the averaged weights of the selected checkpoint)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from galda.callbacks import WeightEMA

STEPS_PER_EPOCH, EPOCHS, HORIZON = 8, 2, 0.25


class _Toy(pl.LightningModule):
    """A linear → batch norm → linear classifier: parameters and running-statistics buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class _RawWeights(pl.Callback):
    """The module's raw floating-point state after every optimiser step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        state = pl_module.state_dict()
        self.states.append(
            {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
        )


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8 * STEPS_PER_EPOCH, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _fit(tmp_path) -> tuple[pl.Trainer, _Toy, _RawWeights, WeightEMA]:
    torch.manual_seed(0)
    raw, ema, model = _RawWeights(), WeightEMA(horizon=HORIZON), _Toy()
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        callbacks=[raw, ema, pl.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor=None)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, _loader(), _loader())
    return trainer, model, raw, ema


def test_the_average_is_a_plain_ema_with_its_decay_sized_to_the_run(tmp_path):
    trainer, model, raw, ema = _fit(tmp_path)
    steps = STEPS_PER_EPOCH * EPOCHS
    decay = 1 - 1 / (HORIZON * steps)
    assert ema.decay == pytest.approx(decay)
    reference = dict(raw.states[0])  # the first update copies the weights
    for state in raw.states[1:]:
        reference = {k: decay * reference[k] + (1 - decay) * v for k, v in state.items()}
    saved = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    for key, want in reference.items():
        torch.testing.assert_close(
            saved["state_dict"][key], want
        )  # the checkpoint holds the average
        torch.testing.assert_close(model.state_dict()[key], want)  # and the module after fit
    # the raw weights travel beside it for an exact resume
    torch.testing.assert_close(
        saved["current_model_state"]["net.0.weight"], raw.states[-1]["net.0.weight"]
    )
    assert not torch.equal(saved["current_model_state"]["net.0.weight"], reference["net.0.weight"])


def test_test_and_validate_after_fit_evaluate_the_checkpoints_averaged_weights(tmp_path):
    trainer, model, raw, _ = _fit(tmp_path)
    path = trainer.checkpoint_callback.best_model_path
    averaged = torch.load(path, weights_only=False)["state_dict"]
    model.net[
        0
    ].weight.data.zero_()  # whatever the module holds now is replaced by the checkpoint's
    seen: dict[str, torch.Tensor] = {}

    class _Seen(pl.Callback):
        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["test"] = pl_module.net[0].weight.detach().clone()

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["validate"] = pl_module.net[0].weight.detach().clone()

    trainer.callbacks.append(_Seen())
    trainer.test(model, _loader(), ckpt_path=path, verbose=False)
    trainer.validate(model, _loader(), ckpt_path=path, verbose=False)
    torch.testing.assert_close(seen["test"], averaged["net.0.weight"])
    torch.testing.assert_close(seen["validate"], averaged["net.0.weight"])


def test_a_horizon_outside_0_1_is_refused(compose_cfg):
    from galda.errors import GaldaError
    from galda.preflight import preflight_config

    with pytest.raises(ValueError, match="horizon"):
        WeightEMA(horizon=0)
    with pytest.raises(ValueError, match="horizon"):
        WeightEMA(horizon=1.5)
    # before any work: preflight names the key and a value that works
    cfg = compose_cfg(
        "+callbacks.weight_ema._target_=galda.callbacks.WeightEMA",
        "+callbacks.weight_ema.horizon=0",
    )
    with pytest.raises(GaldaError, match=r"callbacks\.weight_ema\.horizon=0: .*horizon=0\.05"):
        preflight_config(cfg)
    preflight_config(compose_cfg("+callbacks.weight_ema._target_=galda.callbacks.WeightEMA"))


def test_a_galda_run_selects_and_reports_the_averaged_weights(tiny_cfg, tmp_path):
    """Through ``galda.train``: the monitor saw the averaged weights during fitting, and the
    re-validation of the selected checkpoint (results.json) sees the same ones."""
    from galda.train import train

    cfg = tiny_cfg(
        "method=mmd",
        "trainer.max_epochs=3",
        "callbacks=weight_ema",  # conf/callbacks/weight_ema.yaml
        "callbacks.weight_ema.horizon=0.5",
        run_dir=tmp_path / "run",
    )
    results = train(cfg)
    monitor = results["selection"]["monitor"]
    assert results["validation"][monitor] == pytest.approx(results["selection"]["best_score"])
    saved = torch.load(results["checkpoint"], weights_only=False)
    assert "current_model_state" in saved  # the raw weights beside the averaged ones
    assert not torch.equal(
        saved["state_dict"]["net.head.weight"], saved["current_model_state"]["net.head.weight"]
    )


def test_a_resumed_fit_ends_with_the_same_average(tmp_path):
    """The average and the raw weights both come back from the checkpoint: resuming after the
    first epoch ends where the uninterrupted run does."""
    _, whole, _, _ = _fit(tmp_path / "whole")

    class _StopAfterFirstEpoch(pl.Callback):  # a run killed after its first checkpoint
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    def trainer(folder, *extra: pl.Callback) -> pl.Trainer:
        return pl.Trainer(
            max_epochs=EPOCHS,  # the same plan, so the same decay (galda refuses another budget)
            callbacks=[
                WeightEMA(horizon=HORIZON),
                pl.callbacks.ModelCheckpoint(dirpath=folder),
                *extra,
            ],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=folder,
        )

    torch.manual_seed(0)
    first = trainer(tmp_path / "part", _StopAfterFirstEpoch())
    first.fit(_Toy(), _loader(), _loader())
    assert first.current_epoch == 1
    resumed = _Toy()
    trainer(tmp_path / "part").fit(
        resumed, _loader(), _loader(), ckpt_path=first.checkpoint_callback.best_model_path
    )
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)
