"""galda's OmegaConf resolvers, registered on ``import galda`` so that every way of composing the
config (the app, ``hydra.compose`` in tests and notebooks) can resolve them."""

from __future__ import annotations

from omegaconf import OmegaConf


def _parallel_jobs(jobs_per_gpu: int | None = None) -> int:
    """``${galda_parallel_jobs:<jobs per GPU>}``: concurrent jobs of ``hydra/launcher=gpus``."""
    from galda.devices import parallel_jobs

    return parallel_jobs() if jobs_per_gpu is None else parallel_jobs(jobs_per_gpu)


def _selection_direction(monitor: str) -> str:
    """``${galda_direction:<monitor>}``: max or min for a selection metric (validator registry)."""
    from galda.validators import direction

    return direction(monitor)


def register() -> None:
    OmegaConf.register_new_resolver("galda_parallel_jobs", _parallel_jobs, replace=True)
    OmegaConf.register_new_resolver("galda_direction", _selection_direction, replace=True)
