"""Trained models as plain ``nn.Module``\\ s that classify raw images: :func:`load_model`.

A galda checkpoint is self-contained: the network's Hydra config (``hyper_parameters["net"]``),
and in the state dict the module's :class:`galda.models.normaliser.DomainNormaliser` — buffers
``normaliser.mean`` / ``normaliser.std`` of shape (2, C) (row 0 source, row 1 target) and, as its
extra state, the input's ``image_shape`` and ``bands`` — and, once calibrated, the temperature (a
top-level ``temperature`` entry; see :mod:`galda.calibration`).
:func:`load_model` turns it into a :class:`MergerPredictor`::

    import galda
    model = galda.load_model("outputs/runs/2026-..._dann_seed1")   # run folder or .ckpt
    p = model(images)            # raw (N, C, H, W) float32, as in the input files -> P(merger) (N,)

The predictor holds only the network (no discriminator, optimiser or metrics), so it is also what
``python -m galda.export`` writes to ONNX / TorchScript. Checkpoints are pickles: load only files
you trust: they are read with ``torch.load(weights_only=True)``, which runs no pickled code.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from galda.errors import GaldaError
from galda.results import RESULTS_FILE

DOMAINS = ("source", "target")
#: state-dict keys of the normalisation buffers and of the input's shape and bands, current first
#: (``galda.models.normaliser``), then the layout of the first self-contained checkpoints
NORM_KEYS = (("normaliser.mean", "normaliser.std"), ("norm_mean", "norm_std"))
INPUT_INFO_KEYS = ("normaliser._extra_state", "_extra_state")


class MergerPredictor(nn.Module):
    """Raw images → P(merger): normalise for one domain, run the network, apply the temperature.

    ``forward(x)`` takes float images (N, C, H, W) in the units of the input files and returns
    P(merger) = softmax(logits / T)[:, 1], shape (N,). :meth:`logits` returns the (N, 2) logits
    divided by ``T``. ``T`` is 1 for an uncalibrated model (``calibrated=False``, or a checkpoint
    without a fitted temperature).

    Plain attributes describe where the model came from: ``image_shape`` (C, H, W) or None,
    ``bands``, ``domain``, ``temperature``, ``calibrated`` (whether a fitted T is applied),
    ``checkpoint`` (path), ``info`` (method, seed, git commit, run folder when known).
    """

    mean: Tensor
    std: Tensor
    inv_temperature: Tensor

    def __init__(
        self,
        net: nn.Module,
        mean: Any,
        std: Any,
        temperature: float = 1.0,
        image_shape: tuple[int, int, int] | None = None,
        bands: list[str] | None = None,
        domain: str = "target",
        calibrated: bool = False,
        checkpoint: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(1, -1, 1, 1)
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clone())
        self.register_buffer("inv_temperature", torch.tensor(1.0 / float(temperature)))
        self.temperature = float(temperature)
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape else None
        self.bands = list(bands) if bands else None
        self.domain = domain
        self.calibrated = bool(calibrated)
        self.checkpoint = checkpoint
        self.info = dict(info or {})

    @property
    def n_channels(self) -> int:
        return int(self.mean.shape[1])

    @property
    def normalisation(self) -> dict[str, list[float]]:
        """The per-channel mean and std applied to raw images, as plain lists."""
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def logits(self, x: Tensor) -> Tensor:
        """(N, 2) class logits of raw images, divided by the temperature."""
        # (x - mean) / std exactly as the DataModule normalises training and test images
        out = self.net((x - self.mean) / self.std)
        logits = out[1] if isinstance(out, (tuple, list)) else out
        return logits * self.inv_temperature

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x).softmax(dim=1)[:, 1]

    def extra_repr(self) -> str:
        return (
            f"domain={self.domain!r}, image_shape={self.image_shape}, "
            f"temperature={self.temperature:.4g}, calibrated={self.calibrated}"
        )


# --------------------------------------------------------------------------------------------
# finding checkpoints
# --------------------------------------------------------------------------------------------


def _read_results(run_dir: Path) -> dict[str, Any]:
    try:
        with open(run_dir / RESULTS_FILE, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise GaldaError(f"{run_dir / RESULTS_FILE}: unreadable results file ({err})") from err


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a run folder's ``results.json`` names (found again if the folder moved)."""
    run_dir = Path(run_dir)
    results = _read_results(run_dir)
    status = results.get("status")
    if status not in (None, "complete"):
        raise GaldaError(
            f"{run_dir}: the run's status is {status!r}, not 'complete'; "
            "predict with a completed run"
        )
    name = results.get("checkpoint")
    candidates: list[Path] = []
    if name:
        p = Path(name)
        candidates += [p] if p.is_absolute() else [run_dir / p]
        candidates.append(run_dir / "checkpoints" / p.name)  # the folder was moved or copied
    for c in candidates:
        if c.is_file():
            return c
    if name:
        raise GaldaError(
            f"{run_dir}: checkpoint {name} named in {RESULTS_FILE} not found "
            f"(looked in {run_dir / 'checkpoints'})"
        )
    raise GaldaError(
        f"{run_dir}: {RESULTS_FILE} names no checkpoint (a fast_dev_run/smoke run "
        "saves none); train with checkpointing on"
    )


def sweep_runs(folder: str | os.PathLike) -> list[Path]:
    """Run folders with a complete ``results.json`` and a checkpoint below ``folder``, sorted."""
    runs = []
    for results_path in sorted(Path(folder).rglob(RESULTS_FILE)):
        results = _read_results(results_path.parent)
        if results.get("status", "complete") == "complete" and results.get("checkpoint"):
            runs.append(results_path.parent)
    return runs


def resolve_checkpoints(path: str | os.PathLike) -> tuple[list[Path], bool]:
    """``(checkpoints, is_sweep)`` for a checkpoint file, a run folder or a sweep folder."""
    path = Path(path)
    if path.is_file():
        return [path], False
    if not path.exists():
        raise GaldaError(
            f"{path}: model not found (give a .ckpt file, a run folder with "
            f"{RESULTS_FILE}, or a sweep folder)"
        )
    if (path / RESULTS_FILE).is_file():
        return [run_checkpoint(path)], False
    runs = sweep_runs(path)
    if not runs:
        raise GaldaError(
            f"{path}: no {RESULTS_FILE} of a completed run with a checkpoint in this "
            "folder or below it; give a .ckpt file, a run folder or a sweep folder"
        )
    return [run_checkpoint(r) for r in runs], True


# --------------------------------------------------------------------------------------------
# reading checkpoints
# --------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint on the CPU; ``weights_only`` loading (tensors and plain values)."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise GaldaError(f"{path}: checkpoint not found") from err
    except pickle.UnpicklingError as err:
        if "safe_globals" not in str(err):  # torch names the class it refused this way
            raise GaldaError(
                f"{path}: not a readable checkpoint (corrupt or not a torch file)"
            ) from err
        raise GaldaError(
            f"{path}: holds Python objects beyond tensors and plain values, which galda does not "
            "unpickle; re-save it from a current galda run"
        ) from err
    except Exception as err:
        raise GaldaError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise GaldaError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _run_dir_of(ckpt_path: Path) -> Path | None:
    """The run folder of ``<run>/checkpoints/x.ckpt`` when it holds a results file."""
    for parent in (ckpt_path.parent.parent, ckpt_path.parent):
        if (parent / RESULTS_FILE).is_file():
            return parent
    return None


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def _net_config(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    cfg = _plain(checkpoint.get("hyper_parameters", {}).get("net"))
    if isinstance(cfg, Mapping) and "_target_" in cfg:
        return dict(cfg)
    run_dir = _run_dir_of(path)
    if run_dir is not None:  # checkpoints written before the network config travelled in them
        model_cfg = (_read_results(run_dir).get("config") or {}).get("model") or {}
        if isinstance(model_cfg.get("net"), Mapping) and "_target_" in model_cfg["net"]:
            return dict(model_cfg["net"])
    raise GaldaError(
        f"{path}: the checkpoint does not record its network config "
        "(hyper_parameters['net']); retrain with this galda version"
    )


def network_from_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> nn.Module:
    """The checkpoint's network (``net.*`` weights) in eval mode, on the CPU."""
    from hydra.utils import instantiate

    path = Path(path)
    cfg = _net_config(checkpoint, path)
    try:
        net = instantiate(cfg)
    except Exception as err:
        raise GaldaError(f"{path}: cannot build the network {cfg.get('_target_')} ({err})") from err
    weights = checkpoint["state_dict"]
    state = {k.removeprefix("net."): v for k, v in weights.items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise GaldaError(
            f"{path}: weights do not fit the network {cfg['_target_']} ({first})"
        ) from err
    return net.eval()


def normalisation_from_checkpoint(
    checkpoint: dict[str, Any], path: str | os.PathLike
) -> dict[str, dict[str, list[float]]]:
    """``{"source": {"mean", "std"}, "target": {...}}`` from the module's buffers.

    Falls back on the DataModule state Lightning stores in the checkpoint, then on the run's
    ``results.json`` (``normalisation``), for checkpoints written before the buffers existed.
    """
    state = checkpoint["state_dict"]
    for mean_key, std_key in NORM_KEYS:
        if mean_key in state and std_key in state:
            mean, std = state[mean_key].double(), state[std_key].double()
            return {
                d: {"mean": mean[i].tolist(), "std": std[i].tolist()} for i, d in enumerate(DOMAINS)
            }
    for value in checkpoint.values():
        if isinstance(value, Mapping) and isinstance(value.get("stats"), Mapping):
            stats = value["stats"]
            if all(d in stats for d in DOMAINS):
                return {d: {k: list(stats[d][k]) for k in ("mean", "std")} for d in DOMAINS}
    run_dir = _run_dir_of(Path(path))
    if run_dir is not None:
        stats = _read_results(run_dir).get("normalisation") or {}
        if all(d in stats for d in DOMAINS):
            return {d: {k: list(stats[d][k]) for k in ("mean", "std")} for d in DOMAINS}
    raise GaldaError(
        f"{path}: the checkpoint holds no normalisation statistics (normaliser.mean/std)"
    )


def checkpoint_info(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """Method, seed, git commit, run folder and calibration details, where recorded."""
    hp = _plain(checkpoint.get("hyper_parameters", {})) or {}
    info: dict[str, Any] = {"checkpoint": str(path)}
    run_dir = _run_dir_of(path)
    if run_dir is not None:
        results = _read_results(run_dir)
        info["run_dir"] = str(run_dir)
        for key in ("method", "model", "data", "seed", "git_commit"):
            if results.get(key) is not None:
                info[key] = results[key]
    for key in ("git_commit", "method"):
        if hp.get(key) is not None and key not in info:
            info[key] = hp[key]
    if isinstance(checkpoint.get("calibration"), Mapping):
        info["calibration"] = dict(checkpoint["calibration"])
    return info


def predictor_from_checkpoint(
    path: str | os.PathLike, domain: str = "target", calibrated: bool = True
) -> MergerPredictor:
    """One checkpoint file → :class:`MergerPredictor` (CPU, eval mode)."""
    if domain not in DOMAINS:
        raise GaldaError(f"domain={domain!r}: choose 'source' or 'target'")
    path = Path(path)
    checkpoint = read_checkpoint(path)
    net = network_from_checkpoint(checkpoint, path)
    from galda.methods.domain_statistics import (
        CHECKPOINT_KEY,
        set_batchnorm_statistics,
        set_target_stem,
    )

    if domain == "target" and checkpoint.get(CHECKPOINT_KEY):
        # adabn or domain_batchnorm: the target's batch-norm statistics travel beside the network
        set_batchnorm_statistics(net, checkpoint[CHECKPOINT_KEY])
    if domain == "target":
        set_target_stem(net, checkpoint["state_dict"])  # target_stem: its own first convolution
    stats = normalisation_from_checkpoint(checkpoint, path)[domain]
    hp = _plain(checkpoint.get("hyper_parameters", {})) or {}
    fitted = checkpoint.get("temperature")
    use_t = bool(calibrated and fitted is not None)
    temperature = float(fitted) if use_t and fitted is not None else 1.0
    if not np.isfinite(temperature) or temperature <= 0:
        raise GaldaError(
            f"{path}: invalid stored temperature {fitted!r}; recalibrate the checkpoint"
        )
    extra: Mapping[str, Any] = next(
        (
            checkpoint["state_dict"][k]
            for k in INPUT_INFO_KEYS
            if isinstance(checkpoint["state_dict"].get(k), Mapping)
        ),
        {},
    )
    image_shape = extra.get("image_shape") or hp.get("image_shape")
    bands = extra.get("bands") or hp.get("bands")
    model = MergerPredictor(
        net,
        stats["mean"],
        stats["std"],
        temperature=temperature,
        image_shape=tuple(image_shape) if image_shape else None,
        bands=list(bands) if bands else None,
        domain=domain,
        calibrated=use_t,
        checkpoint=str(path),
        info=checkpoint_info(checkpoint, path),
    )
    if model.image_shape and model.image_shape[0] != model.n_channels:
        warnings.warn(
            f"{path}: image_shape {model.image_shape} disagrees with the "
            f"{model.n_channels}-channel normalisation",
            stacklevel=2,
        )
    return model.eval()


def load_model(
    path: str | os.PathLike, domain: str = "target", calibrated: bool = True
) -> MergerPredictor | list[MergerPredictor]:
    """A ready classifier of raw images from a checkpoint, a run folder or a sweep folder.

    Args:
        path: a ``.ckpt`` file; a run folder (its ``results.json`` names the checkpoint); or a
            sweep folder (every completed run below it).
        domain: whose normalisation statistics to apply, ``"target"`` (default: the survey the
            model was adapted to) or ``"source"``.
        calibrated: divide the logits by the temperature stored in the checkpoint (fitted on the
            source validation split; T = 1 when the checkpoint has none).

    Returns:
        A :class:`MergerPredictor` in eval mode on the CPU whose ``forward`` maps raw images
        (N, C, H, W) to P(merger) (N,) — or, for a sweep folder, a list of them (one per run,
        sorted by run folder). Move it with ``.to(device)``.
    """
    checkpoints, is_sweep = resolve_checkpoints(path)
    models = [predictor_from_checkpoint(c, domain, calibrated) for c in checkpoints]
    return models if is_sweep else models[0]
