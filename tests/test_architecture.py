"""Issue 11: one place for each idea — data layer independence, method needs, selection score."""

import subprocess
import sys

import pytest
import torch

from galda.train import train

FAST = ("data=tiny", "model=tiny", "logger=none")


def test_data_layer_imports_neither_simulator_nor_methods():
    code = (
        "import sys, galda.data, galda.data.datamodule; "
        "bad = [m for m in sys.modules if m.startswith(('galda.simulate', 'galda.methods'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "monitor,mode",
    [("val/target/acc", "max"), ("val/source/acc", "max"), ("val/source/loss", "min")],
)
def test_best_score_is_stored_under_the_monitors_name(
    compose_cfg, sim_data_dir, tmp_path, monitor, mode
):
    run = tmp_path / monitor.replace("/", "_")
    cfg = compose_cfg(
        *FAST,
        f"paths.data_dir={sim_data_dir}",
        "trainer.max_epochs=2",
        f"selection.monitor={monitor}",
        f"selection.mode={mode}",
        run_dir=run,
    )
    results = train(cfg)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt_state = next(v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
    expected = float(ckpt_state["best_model_score"])
    assert results["selection"] == {"monitor": monitor, "mode": mode, "best_score": expected}
    assert results[monitor] == expected
    assert results["uses_target_labels"] is monitor.startswith("val/target/")
    other = {"val/target/acc", "val/source/acc", "val/source/loss"} - {monitor}
    assert not other & set(results)  # no other validation key poses as the selection score


@pytest.mark.parametrize(
    "method,images,labels",
    [
        ("baseline", False, False),
        ("mmd", True, False),
        ("dann", True, False),
        ("oracle", True, True),
    ],
)
def test_each_method_gets_exactly_the_target_data_it_declares(
    compose_cfg, sim_data_dir, monkeypatch, method, images, labels
):
    from hydra.utils import get_class

    cfg = compose_cfg(
        *FAST, f"paths.data_dir={sim_data_dir}", f"method={method}", "trainer.fast_dev_run=true"
    )
    method_cls = get_class(cfg.method.module._target_)
    seen = []
    original = method_cls.training_step

    def spy(self, batch, batch_idx):
        seen.append(batch.get("target"))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(method_cls, "training_step", spy)
    results = train(cfg)
    assert seen
    for target in seen:
        if not images:
            assert target is None
        elif labels:
            assert isinstance(target, (tuple, list)) and target[1].dtype == torch.int64
        else:
            assert isinstance(target, torch.Tensor) and target.ndim == 4
    assert results["uses_target_images"] is images and results["uses_target_labels"] is labels
