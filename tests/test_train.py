"""End-to-end runs on the simulator's tiny preset (CPU, fast_dev_run or a couple of epochs)."""

import json
import re
import subprocess
import sys

import pytest
import torch

from galda.results import read_results
from galda.train import train
from tests.conftest import REPO

FAST = ("trainer.fast_dev_run=true", "logger=none")


def _overrides(data_dir, *extra):
    return ("data=tiny", f"paths.data_dir={data_dir}", *extra)


@pytest.mark.parametrize("model", ["deepmerge", "resnet18"])
@pytest.mark.parametrize("method", ["baseline", "mmd", "dann"])
@pytest.mark.parametrize(
    "extras", [(), ("method.module.fisher_weight=0.01", "method.module.entropy_weight=0.05")]
)
def test_every_method_and_model_trains(compose_cfg, sim_data_dir, model, method, extras):
    cfg = compose_cfg(
        *_overrides(sim_data_dir, f"model={model}", f"method={method}", *FAST, *extras)
    )
    results = train(cfg)
    assert results["status"] == "smoke"  # fast_dev_run: never a table entry
    assert 0.0 <= results["test/source/acc"] <= 1.0 and 0.0 <= results["test/target/acc"] <= 1.0
    assert results["model"] == model and results["method"] == method
    assert results["uses_target_labels"] is False


def test_results_file_and_predictions(compose_cfg, sim_data_dir, tmp_path):
    cfg = compose_cfg(
        *_overrides(sim_data_dir, "model=tiny", "method=dann", "trainer.max_epochs=2"),
        run_dir=tmp_path / "run",
    )
    train(cfg)
    results = read_results(tmp_path / "run")
    for key in (
        "test/source/acc",
        "test/target/acc",
        "test/target/auroc",
        "data",
        "model",
        "method",
        "seed",
        "epochs_run",
        "best_epoch",
        "git_commit",
        "versions",
        "wall_time_s",
        "device",
    ):
        assert key in results, key
    assert results["epochs_run"] == 2 and results["best_epoch"] in (0, 1)
    selection = results["selection"]
    assert (selection["monitor"], selection["mode"]) == ("val/validator/im", "max")  # DANN default
    assert selection["best_score"] == pytest.approx(results["validators"]["im"], abs=1e-6)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    import numpy as np

    with np.load(tmp_path / "run" / "predictions.npz") as preds:
        assert preds["target_probs"].shape == preds["target_labels"].shape
        assert ((preds["target_probs"] >= 0) & (preds["target_probs"] <= 1)).all()


def test_same_seed_gives_identical_metrics(compose_cfg, sim_data_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = compose_cfg(
            *_overrides(
                sim_data_dir, "model=deepmerge", "method=mmd", "trainer.max_epochs=2", "logger=none"
            ),
            run_dir=tmp_path / name,
        )
        results = train(cfg)
        runs.append({k: v for k, v in results.items() if k.startswith(("test/", "val/"))})
    assert runs[0] == runs[1]


def test_oracle_is_labelled_as_using_target_labels(compose_cfg, sim_data_dir):
    cfg = compose_cfg(*_overrides(sim_data_dir, "model=tiny", "method=oracle", *FAST))
    assert train(cfg)["uses_target_labels"] is True


def test_target_selection_is_labelled(compose_cfg, sim_data_dir):
    cfg = compose_cfg(
        *_overrides(sim_data_dir, "model=tiny", *FAST, "selection.monitor=val/target/acc")
    )
    assert train(cfg)["uses_target_labels"] is True


def test_target_labels_never_reach_the_training_step(compose_cfg, sim_data_dir, monkeypatch):
    from galda.methods.dann import DANNClassifier

    seen = []
    original = DANNClassifier.training_step

    def spy(self, batch, batch_idx):
        seen.append(batch["target"])
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DANNClassifier, "training_step", spy)
    cfg = compose_cfg(
        *_overrides(
            sim_data_dir, "model=tiny", "method=dann", "trainer.max_epochs=1", "logger=none"
        )
    )
    train(cfg)
    assert seen and all(isinstance(t, torch.Tensor) and t.ndim == 4 for t in seen)


def test_cli_multirun_two_seeds(sim_data_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "galda.run",
        "-m",
        "model=resnet18",
        "method=baseline",
        "seed=1,2",
        *_overrides(sim_data_dir, *FAST),
        f"paths.log_dir={tmp_path}",
        "callbacks.progress_bar=null",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(tmp_path.glob("multirun/default/*/results.json"))
    assert len(found) == 2
    assert sorted(json.loads(p.read_text())["seed"] for p in found) == [1, 2]
    assert len({p.parent.name for p in found}) == 2


def test_cli_reports_user_errors_without_traceback(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "galda.run",
        "data=simsim",
        f"paths.data_dir={tmp_path}",
        f"paths.log_dir={tmp_path}",
        *FAST,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "source.h5" in proc.stderr + proc.stdout


def test_failed_job_does_not_stop_the_sweep(sim_data_dir, tmp_path):
    # the second job has an invalid reversal schedule and fails; the first must still complete
    cmd = [
        sys.executable,
        "-m",
        "galda.run",
        "-m",
        "model=tiny",
        "method=dann",
        "method.module.schedule=ganin,bogus",
        *_overrides(sim_data_dir, *FAST),
        f"paths.log_dir={tmp_path}",
        "callbacks.progress_bar=null",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    # the sweep ends non-zero (after the good job finished) and names the failed job
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 of 2 job(s) of the sweep" in proc.stderr and "schedule=ganin,bogus" not in proc.stderr
    assert re.search(r"method\.module\.schedule=bogus.*: \S+", proc.stderr)
    results = {}
    for path in tmp_path.glob("multirun/default/*/results.json"):
        res = json.loads(path.read_text())
        results["bogus" if "bogus" in path.parent.name else "ganin"] = res
    assert results["ganin"]["status"] == "smoke"
    assert results["bogus"]["status"] == "failed" and "bogus" in results["bogus"]["error"]


def test_config_dir_found_from_repo():
    from galda.run import find_config_dir

    assert find_config_dir() == REPO / "conf"


def test_training_logs_step_values_on_the_logger_cadence_and_exact_epoch_means(
    compose_cfg, sim_data_dir, tmp_path
):
    """Per-step values reach the CSV every log_every_n_steps; the epoch value is the mean of the
    epoch's steps (equal batches), kept by a metric object rather than per-key self.log."""
    import csv

    from galda.train import train

    def run(every: int, name: str) -> list[dict[str, str]]:
        cfg = compose_cfg(
            "data=tiny",
            f"paths.data_dir={sim_data_dir}",
            "model=tiny",
            "method=dann",
            "trainer.max_epochs=2",
            f"trainer.log_every_n_steps={every}",
            run_dir=tmp_path / name,
        )
        assert train(cfg)["status"] == "complete"
        with open(tmp_path / name / "csv" / "metrics.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    rows = run(1, "every")
    for epoch in (0, 1):
        steps = [
            float(r["train/loss_step"])
            for r in rows
            if r["epoch"] == str(epoch) and r.get("train/loss_step")
        ]
        epoch_rows = [r for r in rows if r["epoch"] == str(epoch) and r.get("train/loss_epoch")]
        assert len(steps) >= 2 and len(epoch_rows) == 1
        assert float(epoch_rows[0]["train/loss_epoch"]) == pytest.approx(
            sum(steps) / len(steps), rel=1e-5
        )
        assert epoch_rows[0].get("train/domain_acc_epoch") and epoch_rows[0].get(
            "train/grl_coefficient_epoch"
        )
    n_steps = sum(1 for r in rows if r.get("train/loss_step"))
    sparse = run(3, "sparse")
    logged = [int(r["step"]) for r in sparse if r.get("train/loss_step")]
    assert logged and all((s + 1) % 3 == 0 for s in logged)
    assert len(logged) == n_steps // 3
