"""``train(cfg) -> results``: build everything from the config, check it, fit, test, write results.

One run = one folder (Hydra's output dir) holding ``results.json``, ``predictions.npz``,
``checkpoints/`` (best by the selection monitor, and ``last.ckpt`` for resuming) and ``csv/``.
"""

from __future__ import annotations

import logging
import platform
import re
import time
from pathlib import Path
from typing import Any, NamedTuple, cast

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from galda import results as res
from galda.calibration import calibrate_checkpoint
from galda.callbacks import PredictionWriter
from galda.checkpointing import AtomicCheckpointIO, check_resume
from galda.devices import configure_job_resources
from galda.errors import GaldaError
from galda.host_memory import configure_host_memory
from galda.memory_format import channels_last_for
from galda.methods.base import MergerClassifier
from galda.metrics import binary_confusion
from galda.preflight import preflight, preflight_config, smoke_reasons
from galda.provision import datamodule_config, ensure_data

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
        if not cfg.trainer.get("fast_dev_run"):
            check_resume(last, int(cfg.trainer.max_epochs))
        log.info("Resuming from %s", last)
        return str(last)
    if mode == "true":
        raise GaldaError(f"resume=true but there is no checkpoint at {last}")
    return None


def _best_epoch(path: str | None) -> int | None:
    match = re.search(r"epoch(\d+)", Path(path).name) if path else None
    return int(match.group(1)) if match else None


#: config keys that say how to run, not what to compute: they never force a rerun
RUN_CONTROL_KEYS = (
    "skip_completed",
    "resume",
    "ckpt_path",
    "paths",
    "pin_devices",
    "slurm",
    "reuse_host_memory",  # speed only
)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _set_aside(run_dir: Path) -> None:
    """Move a superseded run's outputs to ``superseded/<time>/`` (kept, never overwritten)."""
    dest = run_dir / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoints", res.RESULTS_FILE, res.PREDICTIONS_FILE, "csv"):
        if (run_dir / name).exists():
            (run_dir / name).rename(dest / name)


def rerun_reason(stored: dict[str, Any], cfg: DictConfig) -> str | None:
    """Why a completed job must run again (None: its results still hold).

    A job is skipped only when its stored resolved config and code version equal the current
    ones, so a changed default (in a config file or in the code) reruns it.
    """
    if stored.get("git_commit") != res.git_commit():
        return f"code changed (git commit {stored.get('git_commit')} -> {res.git_commit()})"
    if "config" not in stored:
        return "no stored config to compare with"
    now = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    old, new = (
        _flatten({k: v for k, v in c.items() if k not in RUN_CONTROL_KEYS})
        for c in (stored["config"], now)
    )
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:3])
        return f"config changed ({shown}{', ...' if len(changed) > 3 else ''})"
    return None


def build_module(cfg: DictConfig) -> MergerClassifier:
    """The method's LightningModule around the model's network, with optimiser and schedule.

    The network goes in as its config, so the checkpoint can rebuild it on its own.
    """
    try:
        module = instantiate(
            cfg.method.module,
            net=cfg.model.net,
            optimizer=instantiate(cfg.optim.optimizer),
            scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
            _recursive_=False,
            _convert_="all",  # plain dicts: the checkpoint loads with torch.load(weights_only=True)
        )
    except InstantiationException as err:  # a constructor's settings error stays a GaldaError
        if isinstance(err.__cause__, GaldaError):
            raise err.__cause__ from None
        raise
    if channels_last_for(cfg):
        module = module.to(memory_format=torch.channels_last)
    return module


def build_trainer(
    cfg: DictConfig,
    callbacks: list[Any] | None = None,
    loggers: list[Any] | None = None,
    **overrides: Any,
) -> pl.Trainer:
    """The Trainer from ``cfg.trainer`` (atomic checkpoint writes; overrides win)."""
    return instantiate(
        cfg.trainer,
        callbacks=callbacks or [],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        _convert_="partial",
        **overrides,
    )


def _method_class(cfg: DictConfig) -> type[MergerClassifier]:
    """The method's LightningModule class (every ``conf/method`` target is a MergerClassifier)."""
    return cast(type[MergerClassifier], get_class(cfg.method.module._target_))


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The keys that name a run in tables: data, model, method, seed (+ honesty flags)."""
    method_cls = _method_class(cfg)
    monitor = str(cfg.selection.monitor)
    return {
        "data": cfg.data.name,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "seed": int(cfg.seed),
        "uses_target_images": bool(method_cls.uses_target_images),
        # a run is marked ‡ when target labels trained it or chose its checkpoint
        "uses_target_labels": bool(method_cls.uses_target_labels)
        or monitor.startswith("val/target/"),
        "selection": {"monitor": monitor, "mode": str(cfg.selection.mode)},
    }


def _callbacks_and_loggers(cfg: DictConfig, run_dir: Path) -> tuple[list[Any], list[Any]]:
    loggers = _instantiate_dict(cfg.get("logger"))
    callbacks = [
        cb
        for cb in _instantiate_dict(cfg.get("callbacks"))
        if loggers or not isinstance(cb, pl.callbacks.LearningRateMonitor)  # needs a logger
    ]
    if not any(isinstance(cb, PredictionWriter) for cb in callbacks):
        callbacks.append(PredictionWriter(str(run_dir)))
    return callbacks, loggers


def _scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def _stored_results(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The run folder's complete ``results.json`` if it is still valid for ``cfg``, else None.

    A complete but outdated result (other config or code) is set aside for the rerun.
    """
    if not (cfg.get("skip_completed", True) and res.is_complete(run_dir)):
        return None
    stored = res.read_results(run_dir)
    reason = rerun_reason(stored, cfg)
    if reason is None:
        log.info("Skipping %s: results.json is already complete for this config and code", run_dir)
        return stored
    log.warning("Re-running %s: %s", run_dir, reason)
    _set_aside(run_dir)
    return None


class _Setup(NamedTuple):
    datamodule: Any  # galda.data.DomainAdaptationDataModule
    module: MergerClassifier
    trainer: pl.Trainer
    callbacks: list[Any]
    loggers: list[Any]


def _set_up(cfg: DictConfig, run_dir: Path) -> _Setup:
    """Data (made if missing, checked against the config), module, callbacks, loggers, trainer."""
    ensure_data(cfg.data)
    dm_cfg = datamodule_config(cfg.data)
    dm_cfg.channels_last = channels_last_for(cfg)  # auto: by trainer.accelerator
    datamodule = instantiate(dm_cfg, _convert_="all")
    preflight(cfg, datamodule)  # the config against the files on disk, before any training
    module = build_module(cfg)
    datamodule.configure_training(module.uses_target_images, type(module).uses_target_labels)
    callbacks, loggers = _callbacks_and_loggers(cfg, run_dir)
    trainer = build_trainer(
        cfg, callbacks, loggers, **configure_job_resources(cfg.get("pin_devices", "auto"))
    )
    datamodule.trainer = trainer  # the device for data.on_device
    datamodule.setup("fit")
    module.set_normalisation(
        datamodule.stats, datamodule.image_shape, datamodule.attrs["source"].get("band_names")
    )
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return _Setup(datamodule, module, trainer, callbacks, loggers)


class _Outcome(NamedTuple):
    best: str | None  # the selected checkpoint
    best_score: float | None  # its monitor value
    temperature: float | None
    test: dict[str, float]
    val: dict[str, float]


def _fit_and_test(cfg: DictConfig, run_dir: Path, s: _Setup) -> _Outcome:
    """Fit (resuming if asked), calibrate, test and re-validate the selected checkpoint."""
    trainer, module, datamodule = s.trainer, s.module, s.datamodule
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_checkpoint(cfg, run_dir))
        ckpt_cb = trainer.checkpoint_callback  # typed Checkpoint; galda's is a ModelCheckpoint
        best = (ckpt_cb.best_model_path if isinstance(ckpt_cb, ModelCheckpoint) else "") or None
        # temperature scaling on source validation only, stored in the checkpoint for predict
        temperature = (
            calibrate_checkpoint(best, datamodule) if best and trainer.is_global_zero else None
        )
        trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        test_metrics = _scalars(trainer.callback_metrics, "test/")
        # the selected checkpoint's validation metrics and validators, as the monitor saw them
        trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        val_metrics = _scalars(trainer.callback_metrics, "val/")
    finally:
        _finish_wandb(s.loggers)
    best_score = (
        float(ckpt_cb.best_model_score)
        if isinstance(ckpt_cb, ModelCheckpoint) and ckpt_cb.best_model_score is not None
        else None
    )
    return _Outcome(best, best_score, temperature, test_metrics, val_metrics)


def _results(
    cfg: DictConfig,
    run_dir: Path,
    meta: dict[str, Any],
    s: _Setup,
    o: _Outcome,
    started: float,
    commit: str | None,
) -> dict[str, Any]:
    """The ``results.json`` content of a finished run (schema in :mod:`galda.results`)."""
    smoke = smoke_reasons(OmegaConf.to_container(cfg.trainer, resolve=True))  # type: ignore[arg-type]
    monitor = meta["selection"]["monitor"]
    meta["selection"]["best_score"] = o.best_score
    predictions = next(cb for cb in s.callbacks if isinstance(cb, PredictionWriter)).arrays
    return {
        "status": "smoke" if smoke else "complete",
        "smoke_reasons": smoke,
        "error": None,
        **meta,
        "epochs_run": int(s.trainer.current_epoch),
        "best_epoch": _best_epoch(o.best),
        monitor: o.best_score,
        **o.test,
        "validation": o.val,
        "validators": {
            k.rsplit("/", 1)[-1]: v for k, v in o.val.items() if k.startswith("val/validator/")
        },
        "confusion": {
            d: binary_confusion(predictions[f"{d}_probs"], predictions[f"{d}_labels"])
            for d in ("source", "target")
            if f"{d}_labels" in predictions
        },
        "split_sizes": s.datamodule.split_sizes,
        "normalisation": s.datamodule.stats,
        "wall_time_s": round(time.time() - started, 2),
        "started_at": started,
        "finished_at": time.time(),
        "device": _device_name(s.trainer),
        "git_commit": commit,
        "versions": res.package_versions(),
        "run_dir": str(run_dir.resolve()),
        "checkpoint": o.best,
        "temperature": o.temperature,
        "predictions": res.PREDICTIONS_FILE,
        "overrides": _task_overrides(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; return the results dictionary (also written to disk)."""
    run_dir = Path(cfg.paths.output_dir)
    stored = _stored_results(cfg, run_dir)
    if stored is not None:
        return stored
    preflight_config(cfg)  # settings that need no data: before anything is read or written
    configure_host_memory(bool(cfg.get("reuse_host_memory", True)))
    started = time.time()
    commit = res.git_commit()  # at the start: the code this run trains with
    pl.seed_everything(int(cfg.seed), workers=True)
    meta = identity(cfg)
    if _method_class(cfg).uses_target_labels:
        log.warning("This run trains on TARGET LABELS (a ceiling row); its results are marked ‡.")
    setup = _set_up(cfg, run_dir)
    outcome = _fit_and_test(cfg, run_dir, setup)
    results = _results(cfg, run_dir, meta, setup, outcome, started, commit)
    if setup.trainer.is_global_zero:
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
        {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            **meta,
            "exit_code": 2 if isinstance(error, GaldaError) else 1,
            "overrides": _task_overrides(),
        },
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
