"""``train(cfg) -> results``: build everything from the config, fit, test, write results.

One run = one folder (Hydra's output dir) holding ``results.json``, ``predictions.npz``,
``checkpoints/`` (best by the selection metric, and ``last.ckpt`` for resuming) and ``csv/``.
"""

from __future__ import annotations

import logging
import platform
import re
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from galda import results as res
from galda.checkpointing import AtomicCheckpointIO
from galda.devices import configure_job_resources
from galda.errors import GaldaError

log = logging.getLogger(__name__)


def _device_name(trainer: pl.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _instantiate_dict(node: DictConfig | None) -> list[Any]:
    if not node:
        return []
    return [instantiate(v) for v in node.values() if v is not None and "_target_" in v]


def _resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.exists():
            raise GaldaError(f"ckpt_path={path}: checkpoint not found")
        return str(path)
    last = run_dir / "checkpoints" / "last.ckpt"
    mode = str(cfg.get("resume", "auto")).lower()
    if mode in ("true", "auto") and last.exists():
        log.info("Resuming from %s", last)
        return str(last)
    if mode == "true":
        raise GaldaError(f"resume=true but there is no checkpoint at {last}")
    return None


def _best_epoch(path: str | None) -> int | None:
    match = re.search(r"epoch(\d+)", Path(path).name) if path else None
    return int(match.group(1)) if match else None


def build_module(cfg: DictConfig) -> pl.LightningModule:
    """The method's LightningModule around the model's network, with optimiser and schedule."""
    module = instantiate(
        cfg.method.module,
        net=instantiate(cfg.model.net),
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
    )
    if cfg.data.get("channels_last"):
        module = module.to(memory_format=torch.channels_last)
    return module


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The keys that name a run in tables: data, model, method, seed (+ honesty flags)."""
    method_cls = get_class(cfg.method.module._target_)
    monitor = str(cfg.selection.monitor)
    return {
        "data": cfg.data.name,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "seed": int(cfg.seed),
        "uses_target_labels": bool(method_cls.uses_target_labels or "target" in monitor),
        "selection": {"monitor": monitor, "mode": str(cfg.selection.mode)},
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; return the results dictionary (also written to disk)."""
    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("skip_completed", True) and res.is_complete(run_dir):
        log.info("Skipping %s: results.json is already complete", run_dir)
        return res.read_results(run_dir)

    started = time.time()
    commit = res.git_commit()  # at the start: the code this run trains with
    pl.seed_everything(int(cfg.seed), workers=True)
    meta = identity(cfg)
    if meta["uses_target_labels"]:
        log.warning("This run uses TARGET LABELS (%s); its results are labelled as such.",
                    "oracle" if cfg.method.needs_target_labels else "selection on target")

    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg)
    loggers = _instantiate_dict(cfg.get("logger"))
    callbacks = [
        cb for cb in _instantiate_dict(cfg.get("callbacks"))
        if loggers or not isinstance(cb, pl.callbacks.LearningRateMonitor)  # needs a logger
    ]
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        _convert_="partial",
        **configure_job_resources(cfg.get("pin_devices", "auto")),
    )
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_checkpoint(cfg, run_dir))
        ckpt_cb = trainer.checkpoint_callback
        best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    finally:
        _finish_wandb(loggers)

    results: dict[str, Any] = {
        "status": "complete",
        "error": None,
        **meta,
        "epochs_run": int(trainer.current_epoch),
        "best_epoch": _best_epoch(best),
        "val/source/acc": (float(ckpt_cb.best_model_score)
                           if ckpt_cb is not None and ckpt_cb.best_model_score is not None else None),
        **{k: v for k, v in module.test_results.items() if k != "confusion"},
        "confusion": module.test_results.get("confusion", {}),
        "split_sizes": datamodule.split_sizes,
        "normalisation": datamodule.stats,
        "wall_time_s": round(time.time() - started, 2),
        "started_at": started,
        "finished_at": time.time(),
        "device": _device_name(trainer),
        "git_commit": commit,
        "versions": res.package_versions(),
        "run_dir": str(run_dir.resolve()),
        "checkpoint": best or None,
        "predictions": res.PREDICTIONS_FILE,
        "overrides": _task_overrides(),
    }
    if trainer.is_global_zero:
        res.write_predictions(run_dir, module.test_predictions)
        res.write_results(run_dir, results)
    return results


def write_failure(cfg: DictConfig, error: BaseException) -> None:
    """Record a failed job so the report can name it."""
    try:
        meta = identity(cfg)
    except Exception:  # noqa: BLE001 - the config itself may be what failed
        meta = {k: cfg.get(k) for k in ("seed",)}
    res.write_results(
        Path(cfg.paths.output_dir),
        {"status": "failed", "error": f"{type(error).__name__}: {error}", **meta,
         "overrides": _task_overrides()},
    )


def _task_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []


def _finish_wandb(loggers: list[Any]) -> None:
    """End the W&B run so the next job of a multirun starts its own (never merged)."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()
