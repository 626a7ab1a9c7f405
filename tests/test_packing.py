"""Several jobs per GPU (``hydra/launcher=gpus``): jobs per GPU, device pinning, thread shares.

The device count is mocked, so these run on a CPU-only machine."""

from collections import Counter

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import galda.run  # noqa: F401  (registers the galda_parallel_jobs resolver)
from galda import devices
from galda.errors import GaldaError
from tests.conftest import CONF

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


@pytest.fixture()
def machine(monkeypatch):
    """A fake machine: ``machine(n_gpus, cpus)`` patches the GPU count and the core count."""
    threads = torch.get_num_threads()

    def _set(n_gpus: int, cpus: int) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)
        monkeypatch.setattr(devices, "_cpu_count", lambda: cpus)

    yield _set
    torch.set_num_threads(threads)


def _launcher_n_jobs(*overrides: str) -> int:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(
                "train", overrides=["hydra/launcher=gpus", *overrides], return_hydra_config=True
            )
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)["n_jobs"]
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "n_gpus,per_gpu,cpus,expected",
    [
        (1, 4, 16, 4),
        (1, 8, 16, 8),
        (2, 3, 16, 6),
        (4, 1, 8, 4),
        (0, 8, 16, 4),
        (0, 8, 2, 2),
        (0, 8, 1, 1),  # CPU only: one per core, at most 4
    ],
)
def test_concurrent_jobs(n_gpus, per_gpu, cpus, expected):
    assert devices.concurrent_jobs(n_gpus, per_gpu, cpus) == expected


@pytest.mark.parametrize("n_gpus,per_gpu,cpus", [(1, 8, 16), (2, 3, 16), (3, 2, 12), (4, 4, 64)])
def test_plan_packs_jobs_per_gpu_round_robin_with_thread_shares(n_gpus, per_gpu, cpus):
    concurrent = devices.concurrent_jobs(n_gpus, per_gpu, cpus)
    plans = [devices.plan_job(k, concurrent, n_gpus, cpus) for k in range(3 * concurrent)]
    # reference: job k on GPU k mod n, each with cpus // (n * per_gpu) threads
    assert [p.device for p in plans] == [k % n_gpus for k in range(3 * concurrent)]
    assert {p.threads for p in plans} == {cpus // (n_gpus * per_gpu)}
    # any `concurrent` consecutive job numbers put exactly `per_gpu` jobs on each GPU
    for start in range(len(plans) - concurrent):
        window = Counter(p.device for p in plans[start : start + concurrent])
        assert window == {gpu: per_gpu for gpu in range(n_gpus)}
    assert plans[0].threads * concurrent <= cpus


def test_more_jobs_than_cores_still_get_one_thread():
    assert devices.plan_job(5, concurrent=32, n_gpus=2, cpu_count=16) == devices.JobPlan(1, 1)
    assert devices.plan_job(3, concurrent=4, n_gpus=0, cpu_count=2) == devices.JobPlan(None, 1)


@pytest.mark.parametrize(
    "n_gpus,cpus,overrides,expected",
    [
        (1, 16, [], devices.DEFAULT_JOBS_PER_GPU),
        (1, 16, ["jobs_per_gpu=8"], 8),
        (2, 16, ["jobs_per_gpu=3"], 6),
        (0, 16, ["jobs_per_gpu=8"], 4),  # CPU-only machines unchanged: one per core, <= 4
        (0, 2, [], 2),
        (1, 16, ["jobs_per_gpu=8", "hydra.launcher.n_jobs=3"], 3),  # n_jobs given directly wins
    ],
)
def test_gpus_launcher_n_jobs(machine, n_gpus, cpus, overrides, expected):
    machine(n_gpus, cpus)
    assert _launcher_n_jobs(*overrides) == expected


def test_yaml_default_matches_the_documented_default():
    text = (CONF / "hydra" / "launcher" / "gpus.yaml").read_text()
    assert f"jobs_per_gpu: {devices.DEFAULT_JOBS_PER_GPU} " in text


@pytest.mark.parametrize("bad", ["0", "-2", "2.5", "many"])
def test_bad_jobs_per_gpu_names_the_key(machine, bad):
    machine(1, 16)
    with pytest.raises(GaldaError, match="jobs_per_gpu"):
        devices.parallel_jobs(bad)
    with pytest.raises(Exception, match=r"GaldaError.*jobs_per_gpu="):  # OmegaConf wraps it
        _launcher_n_jobs(f"jobs_per_gpu={bad}")


@pytest.mark.parametrize("n_gpus,n_jobs,cpus", [(1, 8, 16), (2, 8, 16), (4, 4, 16)])
def test_each_job_is_pinned_and_gets_its_thread_share(machine, monkeypatch, n_gpus, n_jobs, cpus):
    machine(n_gpus, cpus)
    launcher = OmegaConf.create({"_target_": JOBLIB, "n_jobs": n_jobs})
    monkeypatch.setattr(devices, "_launcher_cfg", lambda: launcher)
    seen = []
    for job in range(2 * n_jobs):
        monkeypatch.setattr(devices, "current_job_num", lambda job=job: job)
        overrides = devices.configure_job_resources("auto")
        seen.append((overrides["devices"], torch.get_num_threads()))
        assert overrides["accelerator"] == "gpu"
    assert [d for d, _ in seen] == [[k % n_gpus] for k in range(2 * n_jobs)]
    assert {t for _, t in seen} == {cpus // n_jobs}
    assert Counter(d[0] for d, _ in seen[:n_jobs]) == {g: n_jobs // n_gpus for g in range(n_gpus)}


def test_cpu_only_jobs_share_the_cores(machine, monkeypatch):
    machine(0, 8)
    launcher = OmegaConf.create({"_target_": JOBLIB, "n_jobs": 4})
    monkeypatch.setattr(devices, "_launcher_cfg", lambda: launcher)
    assert devices.configure_job_resources("auto") == {}
    assert torch.get_num_threads() == 2


def test_submitit_local_jobs_are_pinned_and_capped_by_cpus_per_task(machine, monkeypatch):
    machine(1, 16)
    launcher = OmegaConf.create(
        {
            "_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
            "cpus_per_task": 3,
        }
    )
    monkeypatch.setattr(devices, "_launcher_cfg", lambda: launcher)
    monkeypatch.setattr(devices, "current_job_num", lambda: 5)
    assert devices.configure_job_resources("auto") == {"accelerator": "gpu", "devices": [0]}
    assert torch.get_num_threads() == 3  # min(16 // 4 jobs, cpus_per_task)


def test_no_pinning_outside_parallel_local_launchers(machine, monkeypatch):
    machine(2, 16)
    slurm = OmegaConf.create(
        {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
    )
    monkeypatch.setattr(devices, "_launcher_cfg", lambda: slurm)
    assert devices.configure_job_resources("auto") == {}
    assert devices.configure_job_resources(False) == {}
    assert devices.configure_job_resources("false") == {}


def _packing_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "packing", CONF.parent / "benchmarks" / "packing.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packing_probe_suggests_the_smallest_count_near_the_best():
    packing = _packing_module()
    rows = [
        {"n": 1, "aggregate_images_per_s": 100.0},
        {"n": 2, "aggregate_images_per_s": 190.0},
        {"n": 4, "aggregate_images_per_s": 300.0},
        {"n": 8, "aggregate_images_per_s": 320.0},
        {"n": 12, "aggregate_images_per_s": 310.0},
        {"n": 16, "skipped": "no worker"},
    ]
    assert packing.suggest(rows) == 4  # 300 >= 0.9 * 320; 190 is not
    assert packing.suggest([{"n": 1, "aggregate_images_per_s": None}]) is None


@pytest.mark.slow
def test_packing_probe_runs_on_the_cpu(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "packing.json"
    cmd = [
        sys.executable,
        str(CONF.parent / "benchmarks" / "packing.py"),
        "--device",
        "cpu",
        "--counts",
        "1,2",
        "--seconds",
        "0.5",
        "--batch",
        "4",
        "--images",
        "16",
        "--warmup",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["n"] for r in report["rows"]] == [1, 2]
    assert all(r["aggregate_images_per_s"] > 0 for r in report["rows"])
    assert [len(r["steps"]) for r in report["rows"]] == [1, 2]  # every process of a count ran
    assert report["suggested_jobs_per_gpu"] in (1, 2)
