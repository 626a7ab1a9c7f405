"""Issue 12: schedules that end with the run, AdaBN, the controls and ceilings, stratified splits,
reruns when a config or the code changed."""

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from galda.data.datamodule import split_galaxies
from galda.errors import GaldaError
from galda.losses import ganin_coefficient
from galda.train import train

TINY = ("data=tiny", "model=tiny", "logger=none")


class _LastStep(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.coefficient = pl_module.coefficient
        self.step = trainer.global_step


def test_schedules_reach_their_planned_end_when_the_budget_ends(
    compose_cfg, sim_data_dir, monkeypatch
):
    spy = _LastStep()
    from galda import train as train_module

    original = train_module._callbacks_and_loggers
    monkeypatch.setattr(
        train_module,
        "_callbacks_and_loggers",
        lambda cfg, run_dir: (original(cfg, run_dir)[0] + [spy], []),
    )
    cfg = compose_cfg(
        *TINY, f"paths.data_dir={sim_data_dir}", "method=dann", "trainer.max_epochs=3"
    )
    results = train(cfg)
    assert results["epochs_run"] == 3  # stopped by the budget
    base_lr = float(cfg.optim.optimizer.lr)
    floor = base_lr / float(cfg.optim.scheduler.div_factor)
    assert spy.lr == pytest.approx(floor, rel=0.05)  # back at the bottom of the cycle
    assert spy.coefficient == pytest.approx(ganin_coefficient(1.0, 10.0), abs=1e-3)
    assert spy.coefficient > 0.999


def test_resume_with_another_budget_stops_with_the_way_out(compose_cfg, sim_data_dir, tmp_path):
    run = tmp_path / "run"
    train(compose_cfg(*TINY, f"paths.data_dir={sim_data_dir}", "trainer.max_epochs=1", run_dir=run))
    (run / "results.json").unlink()  # as if the run had been interrupted
    with pytest.raises(GaldaError, match=r"trainer.max_epochs=1.*resume=false"):
        train(
            compose_cfg(
                *TINY, f"paths.data_dir={sim_data_dir}", "trainer.max_epochs=2", run_dir=run
            )
        )


def test_corrupt_last_checkpoint_is_named(compose_cfg, sim_data_dir, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"truncated")
    with pytest.raises(GaldaError, match=r"last.ckpt.*resume=false.*delete"):
        train(compose_cfg(*TINY, f"paths.data_dir={sim_data_dir}", run_dir=run))


def test_job_reruns_when_a_default_it_depends_on_changed(
    compose_cfg, sim_data_dir, tmp_path, caplog
):
    run = tmp_path / "run"
    overrides = (*TINY, f"paths.data_dir={sim_data_dir}", "trainer.fast_dev_run=true")
    first = train(compose_cfg(*overrides, run_dir=run))
    assert train(compose_cfg(*overrides, run_dir=run))["finished_at"] == first["finished_at"]
    # pretend the stored run was made when the learning-rate default was another
    stored = json.loads((run / "results.json").read_text())
    stored["config"]["optim"]["optimizer"]["lr"] = 0.5
    (run / "results.json").write_text(json.dumps(stored))
    with caplog.at_level("INFO"):
        again = train(compose_cfg(*overrides, run_dir=run))
    assert again["finished_at"] != first["finished_at"]
    assert "optim.optimizer.lr" in caplog.text


def test_split_is_stratified_by_class():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(400), 2)
    labels = np.repeat((rng.random(400) < 0.55).astype(int), 2)
    split = split_galaxies(ids, (0.7, 0.1, 0.2), seed=3, labels=labels)
    frac = {s: labels[np.isin(ids, split[s])].mean() for s in split}
    overall = labels.mean()
    assert all(abs(f - overall) < 0.02 for f in frac.values()), frac
    assert sum(len(v) for v in split.values()) == 400


def test_adabn_uses_target_statistics_for_target_images_only():
    from galda.methods import AdaBNClassifier
    from galda.models import TinyNet

    torch.manual_seed(0)
    module = AdaBNClassifier(TinyNet())
    module.eval()
    source = torch.randn(32, 3, 75, 75)
    target = torch.randn(64, 3, 75, 75) * 3 + 2
    before = module(target)
    bn = next(m for m in module.net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    source_mean = bn.running_mean.clone()
    module.adapt(target, batch_size=16)
    torch.testing.assert_close(bn.running_mean, source_mean)  # source statistics untouched
    with module.target_statistics():
        adapted = module(target)
        # the target statistics are the plain moments of the first layer's input on the target
        first_conv = module.net.features[0]
        moments = first_conv(target).mean(dim=(0, 2, 3))
        torch.testing.assert_close(bn.running_mean, moments, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(before, adapted)
    torch.testing.assert_close(module(source), module(source))


@pytest.mark.parametrize("method", ["adabn", "bnmix", "oracle", "oracle_joint"])
def test_new_rows_train_and_declare_their_needs(compose_cfg, sim_data_dir, method):
    cfg = compose_cfg(
        *TINY, f"paths.data_dir={sim_data_dir}", f"method={method}", "trainer.fast_dev_run=true"
    )
    results = train(cfg)
    ceiling = method.startswith("oracle")
    assert results["uses_target_labels"] is ceiling
    assert results["selection"]["monitor"] == ("val/target/acc" if ceiling else "val/source/acc")
    assert 0.0 <= results["test/target/acc"] <= 1.0
