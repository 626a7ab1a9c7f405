"""Shared pieces of the benchmark modules: timing and memory probes, JSON output, the config the
app composes, the synthetic data set and the one DataModule the training-side modules share.

Import this only after ``OMP_WAIT_POLICY`` is settled (``run.py`` does that before any torch
import).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def quiet() -> None:
    """Silence Lightning's and galda's info logs and warnings for a clean benchmark table."""
    import pytorch_lightning  # noqa: F401 - sets its loggers' levels on import; override them

    names = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "galda")
    for name in (*names, "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON through galda's atomic writer (temporary file, then rename); NaN becomes null."""
    from galda.results import _jsonable, atomic_write_text

    atomic_write_text(path, json.dumps(_jsonable(data), indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- timing, memory


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mib() -> float:
    """Resident set size of this process now, MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def peak_rss_mib_process() -> float:
    """Peak RSS of this process so far (getrusage), MiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


class MemoryWatch:
    """Peak RSS while the block runs (sampled from /proc/self/statm) + CUDA peak allocation."""

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak_rss = 0.0
        self.cuda_peak: float | None = None
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, rss_mib())
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryWatch:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.peak_rss = rss_mib()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, rss_mib())
        if self.device.type == "cuda":
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device) / 2**20


def quartiles(values: list[float]) -> list[float]:
    """[first quartile, third quartile] (both ends for fewer than four values)."""
    if len(values) < 4:
        return [min(values), max(values)] if values else []
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- config, data


def compose_config(
    model: str,
    method: str,
    args: argparse.Namespace,
    device: torch.device,
    paths: tuple[Path, Path],
    out_dir: Path,
    extra: list[str] | None = None,
):
    """The app's config as ``python -m galda.run model=... method=...`` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [
        f"model={model}",
        f"method={method}",
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        "logger=none",
        f"data.source_path={paths[0]}",
        f"data.target_path={paths[1]}",
        "data.simulate=null",
        f"data.batch_size={args.batch_size}",
        f"data.channels_last={args.channels_last}",
        f"data.on_device={str(bool(args.on_device)).lower()}",
        f"paths.output_dir={out_dir}",
        *(extra or []),
    ]
    if args.precision:
        overrides.append(f"trainer.precision={args.precision}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def apply_torch_flags(cfg) -> None:
    """The global flags a Trainer built from cfg.trainer sets, applied to both paths alike."""
    det = cfg.trainer.get("deterministic", None)
    if det == "warn":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif det is not None:
        torch.use_deterministic_algorithms(bool(det))
    if det:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark", False))


def synthetic_images(n: int, seed: int, size: int = 75) -> tuple[np.ndarray, np.ndarray]:
    """n float32 images (3, size, size): a blob, plus a companion blob for label 1."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.5).astype(np.int64)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = size / 2
    blob = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / 30.0)
    companion = np.exp(-((xx - c - 10) ** 2 + (yy - c - 5) ** 2) / 10.0)
    scale = rng.uniform(0.5, 1.5, (n, 3, 1, 1)).astype(np.float32)
    images = blob * scale + labels[:, None, None, None] * np.float32(0.5) * companion
    return images.astype(np.float32), labels


def make_synthetic_data(
    folder: Path, n_per_domain: int, seed: int = 0, size: int = 75
) -> tuple[Path, Path]:
    """Paired source/target domains in galda's HDF5 format (one image per galaxy per domain)."""
    from galda.data.h5format import write_domain

    images, labels = synthetic_images(n_per_domain, seed, size)
    ids = np.arange(1000, 1000 + n_per_domain)
    src = write_domain(
        folder / "source.h5", images, labels, ids, attrs={"domain": "source"}, overwrite=True
    )
    noise = np.random.default_rng(seed + 1).normal(0, 0.05, images.shape).astype(np.float32)
    tgt = write_domain(
        folder / "target.h5",
        images + noise,
        labels,
        ids,
        attrs={"domain": "target"},
        overwrite=True,
    )
    return src, tgt


def build_datamodule(cfg):
    """The DataModule as the app builds it: from ``cfg.data`` without its provisioning keys."""
    from hydra.utils import instantiate

    from galda.provision import datamodule_config

    return instantiate(datamodule_config(cfg.data), _convert_="all")


def feed(datamodule, module) -> int:
    """Point the shared DataModule's training loader at the domains ``module`` trains on (as
    ``galda.train`` does through ``configure_training`` before setup); images per step."""
    uses_target = bool(getattr(module, "uses_target_images", True))
    datamodule.train_domains = ("source", "target") if uses_target else ("source",)
    return datamodule.batch_size * (2 if uses_target else 1)


def shared_datamodule(args: argparse.Namespace):
    """The one DataModule of the synthetic set every training row uses (made on first call).

    Cached on ``args.shared``; its setup time and split sizes go to ``args.report["settings"]``.
    """
    if "datamodule" in args.shared:
        return args.shared["datamodule"]
    settings = args.report["settings"]
    start = time.perf_counter()
    paths = make_synthetic_data(args.tmp / "data", args.images)
    settings["data_write_s"] = round(time.perf_counter() - start, 2)
    cfg = compose_config(
        args.models[0], args.methods[0], args, args.device, paths, args.tmp / "run"
    )
    apply_torch_flags(cfg)
    datamodule = build_datamodule(cfg)
    start = time.perf_counter()
    datamodule.setup("fit")
    settings["datamodule_setup_s"] = round(time.perf_counter() - start, 2)
    settings["split_sizes"] = datamodule.split_sizes
    n_train = min(datamodule.split_sizes[d]["train"] for d in ("source", "target"))
    settings["train_batches_per_epoch"] = n_train // args.batch_size
    args.shared.update(datamodule=datamodule, paths=paths)
    return datamodule
