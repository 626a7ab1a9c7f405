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
