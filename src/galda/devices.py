"""Where each job of a local sweep runs: its GPU and its share of the CPU threads.

``hydra/launcher=gpus`` (Hydra's joblib launcher) runs ``n_jobs = n_gpus × jobs_per_gpu`` jobs at
once; on a machine without GPUs, one job per core (at most 4). Job ``k`` of the sweep trains on GPU
``k mod n_gpus`` (``devices=[index]`` in its Trainer) with ``cpu_count // n_jobs`` torch threads.
The job number — not the process — decides the device, so a worker process reused for a later job
moves with it (setting ``CUDA_VISIBLE_DEVICES`` would not: CUDA reads it once per process). With
several GPUs, jobs that end early can leave the round robin uneven for a while; with one GPU (the
common case) every job shares it.

Why several jobs per GPU (``DEFAULT_JOBS_PER_GPU``): a DeepMerge step is about 40 MFLOP per image
forward and backward, ~10 GFLOP for a 128 + 128 batch, well under a millisecond of a modern GPU,
yet a package step took 7-17 ms on an H200 (108 steps/s for the baseline, 59 for DANN:
experiments/gpu_h200/bench_gpu.json): the GPU waits on Python most of the time. Four DANN jobs at
once on that H200 (small set, experiments/gpu_h200/dann_sweep.json) each took 16-19 s for 30 epochs
of 16 steps: together ~128 steps/s, 2.2x one job's step rate and ~3x one job's estimated 12-14 s
run. Four keeps every job's copy of the paper-sized data (2 GB on the device with
``data.on_device``) and a 16-core host's threads (4 each) comfortable on any recent GPU.
``benchmarks/gpu_session.sh`` runs 8 per GPU and measures 1-12 processes at once
(``benchmarks/packing.py``): the default must be confirmed (or raised) by that GPU run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from galda.errors import GaldaError

DEFAULT_JOBS_PER_GPU = 4
MAX_CPU_JOBS = 4  # CPU-only machine: one job per core, at most this many


@dataclass(frozen=True)
class JobPlan:
    """Where one job runs: GPU index (None on a CPU-only machine) and torch threads."""

    device: int | None
    threads: int


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _n_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _check_jobs_per_gpu(jobs_per_gpu: Any) -> int:
    try:
        value = int(jobs_per_gpu)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or str(jobs_per_gpu).strip() != str(value):
        raise GaldaError(
            f"jobs_per_gpu={jobs_per_gpu!r}: must be a whole number >= 1 "
            "(e.g. jobs_per_gpu=4 with hydra/launcher=gpus)"
        )
    return value


def concurrent_jobs(n_gpus: int, jobs_per_gpu: int, cpu_count: int) -> int:
    """Jobs run at once: ``n_gpus × jobs_per_gpu`` with GPUs, else one per core (at most 4)."""
    if n_gpus > 0:
        return n_gpus * jobs_per_gpu
    return max(1, min(MAX_CPU_JOBS, cpu_count))


def device_for_job(job_num: int, n_devices: int) -> int | None:
    """GPU index for the ``job_num``-th job of a sweep (round robin), or None without GPUs."""
    return job_num % n_devices if n_devices > 0 else None


def thread_share(concurrent: int, cpu_count: int) -> int:
    """Torch threads for one of ``concurrent`` jobs sharing ``cpu_count`` cores (at least 1)."""
    return max(1, cpu_count // max(1, concurrent))


def plan_job(job_num: int, concurrent: int, n_gpus: int, cpu_count: int) -> JobPlan:
    """The GPU and thread share of job ``job_num`` when ``concurrent`` jobs run at once."""
    return JobPlan(device_for_job(job_num, n_gpus), thread_share(concurrent, cpu_count))


def parallel_jobs(jobs_per_gpu: Any = DEFAULT_JOBS_PER_GPU) -> int:
    """``n_jobs`` of ``hydra/launcher=gpus`` (the ``galda_parallel_jobs`` resolver)."""
    return concurrent_jobs(_n_gpus(), _check_jobs_per_gpu(jobs_per_gpu), _cpu_count())


def current_job_num() -> int:
    """This job's number within its sweep (0 for a single run)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        job: Any = HydraConfig.get().job
        return int(OmegaConf.select(job, "num", default=0) or 0)  # unset outside a sweep
    except ValueError:  # HydraConfig not set: called outside a Hydra app
        return 0


def _launcher_cfg() -> Any:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().launcher
    except ValueError:  # HydraConfig not set: called outside a Hydra app
        return None


def launcher_is_parallel_local(launcher: Any = None) -> bool:
    """True inside a job started by the joblib launcher or submitit's local executor."""
    launcher = _launcher_cfg() if launcher is None else launcher
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    return "Joblib" in target or "LocalLauncher" in target


def launcher_concurrency(launcher: Any = None) -> int:
    """How many jobs the current local launcher runs at once.

    Joblib: its ``n_jobs`` (-1: one per core). submitit's local executor starts every job of the
    sweep at once; its ``cpus_per_task`` (if set) caps the share in :func:`configure_job_resources`.
    """
    launcher = _launcher_cfg() if launcher is None else launcher
    n_jobs = launcher.get("n_jobs") if launcher is not None else None
    if n_jobs is None:
        return parallel_jobs()
    n_jobs = int(n_jobs)
    return _cpu_count() if n_jobs < 0 else max(1, n_jobs)


def trainer_device_overrides(pin_devices: bool) -> dict[str, Any]:
    """Trainer keyword overrides pinning this job to its own GPU (empty when not pinning)."""
    if not pin_devices:
        return {}
    index = device_for_job(current_job_num(), _n_gpus())
    if index is None:
        return {}  # CPU: the jobs simply run in parallel processes
    return {"accelerator": "gpu", "devices": [index]}


def configure_job_resources(pin_devices: bool | str) -> dict[str, Any]:
    """Pin this job to its GPU and set its share of the CPU threads under a parallel local launcher.

    ``pin_devices``: ``True``, ``False`` or ``"auto"`` (pin when a parallel local launcher runs
    the job). Returns Trainer keyword overrides.
    """
    if str(pin_devices).lower() == "auto":
        pin_devices = launcher_is_parallel_local()
    if not pin_devices or str(pin_devices).lower() == "false":
        return {}
    import torch

    launcher = _launcher_cfg()
    cpus = _cpu_count()
    plan = plan_job(current_job_num(), launcher_concurrency(launcher), _n_gpus(), cpus)
    threads = plan.threads
    cpus_per_task = launcher.get("cpus_per_task") if launcher is not None else None
    if cpus_per_task:
        threads = max(1, min(threads, int(cpus_per_task)))
    torch.set_num_threads(threads)
    if plan.device is None:
        return {}  # CPU: the jobs simply run in parallel processes
    return {"accelerator": "gpu", "devices": [plan.device]}
