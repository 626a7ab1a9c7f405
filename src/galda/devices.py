"""One accelerator per sweep job.

Hydra's joblib launcher (and submitit's local executor) run jobs in worker processes. With
``pin_devices: true`` (set by ``hydra/launcher=gpus``) each job trains on GPU
``job_num mod n_gpus`` by passing ``devices=[index]`` to its Trainer. The job number — not the
process — decides the device, so a worker process reused for a later job moves with it (setting
``CUDA_VISIBLE_DEVICES`` would not: CUDA reads it once per process).
"""

from __future__ import annotations

from typing import Any


def device_for_job(job_num: int, n_devices: int) -> int | None:
    """GPU index for the ``job_num``-th job of a sweep (round robin), or None without GPUs."""
    return job_num % n_devices if n_devices > 0 else None


def current_job_num() -> int:
    """This job's number within its sweep (0 for a single run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return int(HydraConfig.get().job.get("num", 0) or 0)
    except ValueError:  # HydraConfig not set: called outside a Hydra app
        return 0


def trainer_device_overrides(pin_devices: bool) -> dict[str, Any]:
    """Trainer keyword overrides pinning this job to its own GPU (empty when not pinning)."""
    if not pin_devices:
        return {}
    import torch

    index = device_for_job(current_job_num(), torch.cuda.device_count())
    if index is None:
        return {}  # CPU: the jobs simply run in parallel processes
    return {"accelerator": "gpu", "devices": [index]}


def parallel_jobs() -> int:
    """How many jobs a local parallel sweep runs at once: one per GPU, else one per core (≤ 4)."""
    import os

    import torch

    n_gpus = torch.cuda.device_count()
    return n_gpus if n_gpus > 0 else max(1, min(4, os.cpu_count() or 1))


def launcher_is_parallel_local() -> bool:
    """True inside a job started by the joblib launcher or submitit's local executor."""
    try:
        from hydra.core.hydra_config import HydraConfig

        target = str(HydraConfig.get().launcher.get("_target_", ""))
    except ValueError:
        return False
    return "Joblib" in target or "LocalLauncher" in target


def configure_job_resources(pin_devices: bool | str) -> dict[str, Any]:
    """Pin this job to its GPU (or share the CPU cores) under a parallel local launcher.

    ``pin_devices``: ``True``, ``False`` or ``"auto"`` (pin when a parallel local launcher runs
    the job). Returns Trainer keyword overrides.
    """
    if str(pin_devices).lower() == "auto":
        pin_devices = launcher_is_parallel_local()
    if not pin_devices or str(pin_devices).lower() == "false":
        return {}
    import os

    import torch

    overrides = trainer_device_overrides(True)
    if not overrides:  # CPU: split the cores between the concurrent jobs
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel_jobs()))
    return overrides
