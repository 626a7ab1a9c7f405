"""Sweeps at scale: device pinning per job, launcher configs, DDP with two CPU processes."""

import json
import re
import subprocess
import sys
from unittest import mock

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from galda import devices
from tests.conftest import CONF, REPO


def test_each_job_gets_its_own_gpu_when_gpus_exist():
    with mock.patch("torch.cuda.device_count", return_value=4):
        assigned = []
        for job in range(8):
            with mock.patch.object(devices, "current_job_num", return_value=job):
                assigned.append(devices.trainer_device_overrides(True)["devices"])
    assert assigned[:4] == [[0], [1], [2], [3]]
    assert assigned[4:] == [[0], [1], [2], [3]]  # a reused worker follows the job, not the process
    assert devices.parallel_jobs() >= 1


def test_no_pinning_without_gpus_or_outside_parallel_launchers():
    with mock.patch("torch.cuda.device_count", return_value=0):
        assert devices.trainer_device_overrides(True) == {}
    assert devices.configure_job_resources("auto") == {}  # not inside a joblib job
    assert devices.configure_job_resources(False) == {}


@pytest.mark.parametrize(
    "launcher,target",
    [("gpus", "JoblibLauncher"), ("slurm", "SlurmLauncher"), ("slurm_local", "LocalLauncher")],
)
def test_launcher_configs_compose(launcher, target):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"hydra/launcher={launcher}", "slurm.account=acct", "slurm.partition=gpu"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    launcher_cfg = cfg.hydra.launcher
    assert target in launcher_cfg._target_
    if launcher == "slurm":
        resolved = OmegaConf.to_container(launcher_cfg, resolve=True)
        assert resolved["gpus_per_node"] == 1 and resolved["account"] == "acct"
        assert resolved["partition"] == "gpu" and resolved["array_parallelism"] >= 1
    if launcher == "slurm_local":  # mirrors slurm.yaml's resources
        resolved = OmegaConf.to_container(launcher_cfg, resolve=True)
        assert (
            resolved["gpus_per_node"] == 1 and resolved["cpus_per_task"] == cfg.slurm.cpus_per_task
        )


@pytest.mark.slow
def test_cpu_sweep_runs_two_jobs_at_a_time(sim_data_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "galda.run",
        "-m",
        "hydra/launcher=gpus",
        "hydra.launcher.n_jobs=2",
        "data=tiny",
        f"paths.data_dir={sim_data_dir}",
        "model=tiny",
        "seed=1,2,3,4",
        "trainer.max_epochs=3",
        "logger=none",
        "callbacks.progress_bar=null",
        f"paths.log_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(tmp_path.glob("multirun/default/*/results.json"))
    assert len(found) == 4
    runs = [json.loads(p.read_text()) for p in found]
    assert all(r["status"] == "complete" for r in runs)
    share = devices.thread_share(2, devices._cpu_count())  # each of 2 jobs: its share of the cores
    threads = [re.search(r"(\d+) threads", r["device"]) for r in runs]
    assert all(t and int(t.group(1)) == share for t in threads), [r["device"] for r in runs]
    # concurrency from the jobs' own start/finish times: two at a time, never more
    events = sorted([(r["started_at"], 1) for r in runs] + [(r["finished_at"], -1) for r in runs])
    running, most = 0, 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most == 2, events  # jobs of 3 epochs: long enough to overlap on a busy machine


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mmd", "dann"])
def test_ddp_two_cpu_processes(sim_data_dir, tmp_path, method):
    cmd = [
        sys.executable,
        "-m",
        "galda.run",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"method={method}",
        "model=tiny",
        "data=tiny",
        f"paths.data_dir={sim_data_dir}",
        "trainer.max_epochs=2",
        "logger=none",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "complete" and res["method"] == method
    assert 0 <= res["test/target/acc"] <= 1
