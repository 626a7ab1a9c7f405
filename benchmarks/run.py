#!/usr/bin/env python
"""Throughput benchmarks: galda's training path against a plain PyTorch loop.

``make bench`` (= ``.venv/bin/python benchmarks/run.py``) measures, in one process and one run:

* training throughput (images/s) of every model x method through the package's real path
  (Hydra config -> DomainAdaptationDataModule + method module + ``pl.Trainer``, built as
  ``galda.train.train`` builds them, with logger / checkpointing / progress bar off), and of the
  same network, loss, optimiser, schedule and data in a hand-written PyTorch loop (the
  reference); package and reference repeats are interleaved and the ratio is reported;
* the data loader alone (the DataModule's ``train_dataloader()``, a CombinedLoader of source and
  target), in batches/s and images/s, and its speed relative to training;
* the simulator's throughput (images/s per core), when ``galda.simulate`` is importable;
* peak memory (RSS; ``torch.cuda.max_memory_allocated`` on a GPU).

Images/s counts the images a step actually forwards: 128 source + 128 target for MMD and DANN,
128 source only for the baseline (it never forwards target images, in the package or the
reference).  Medians over ``--repeats``.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def _omp_wait_policy_from_argv(argv: list[str]) -> str:
    """--omp-wait-policy must act before torch (OpenMP) is imported, so it is read here."""
    for i, arg in enumerate(argv):
        if arg == "--omp-wait-policy" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--omp-wait-policy="):
            return arg.split("=", 1)[1]
    return "passive"


# OpenMP threads that spin while waiting make a shared (oversubscribed) CPU several times slower
# (ResNet18 step on 2 busy cores: 5.3 s spinning vs 1.4 s passive). Package and reference run
# under the same policy, so ratios do not depend on it; it is recorded in the JSON.
_OMP_POLICY = _omp_wait_policy_from_argv(sys.argv[1:])
if _OMP_POLICY in ("passive", "active") and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = _OMP_POLICY.upper()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MODELS = ("deepmerge", "resnet18")
METHODS = ("baseline", "mmd", "dann")
# Steps timed per repeat on a CPU (ResNet18 is ~6x slower per step than DeepMerge); on a GPU
# every model gets GPU_STEPS. --steps overrides both.
CPU_STEPS = {"deepmerge": 20, "resnet18": 6}
GPU_STEPS = 50


# --------------------------------------------------------------------------- helpers


def _quiet() -> None:
    import pytorch_lightning  # noqa: F401 - sets its loggers' levels on import; override them

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric",
                 "galda", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info(device: torch.device) -> dict[str, Any]:
    gpu = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "count": torch.cuda.device_count()}
    return {
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "memory_gib": _total_memory_gib(),
        "gpu": gpu,
        "device": str(device),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _total_memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("galda", "torch", "torchvision", "pytorch-lightning", "hydra-core", "numpy", "h5py"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "n/a"
    out["cuda"] = torch.version.cuda or "n/a"
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_slug(info: dict[str, Any]) -> str:
    if info["gpu"]:
        name = info["gpu"]["name"]
    else:
        name = f"cpu-{info['cpu_model']}-{info['cores']}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def peak_rss_mib_process() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


class MemoryWatch:
    """Peak RSS while the block runs (sampled from /proc/self/statm) + CUDA peak allocation."""

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak_rss = 0.0
        self.cuda_peak = None
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, _rss_mib())
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryWatch:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.peak_rss = _rss_mib()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, _rss_mib())
        if self.device.type == "cuda":
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- data


def make_synthetic_data(folder: Path, n_per_domain: int, seed: int = 0, size: int = 75) -> tuple[Path, Path]:
    """Paired source/target domains in galda's HDF5 format (one image per galaxy per domain)."""
    from galda.data.h5format import write_domain

    rng = np.random.default_rng(seed)
    ids = np.arange(1000, 1000 + n_per_domain)
    labels = (rng.random(n_per_domain) < 0.5).astype(np.int64)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = size / 2
    blob = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / 30.0)
    companion = np.exp(-((xx - c - 10) ** 2 + (yy - c - 5) ** 2) / 10.0)
    base = np.broadcast_to(blob, (n_per_domain, 3, size, size)) * rng.uniform(0.5, 1.5, (n_per_domain, 3, 1, 1))
    images = (base + labels[:, None, None, None] * 0.5 * companion).astype(np.float32)
    src = write_domain(folder / "source.h5", images, labels, ids, attrs={"domain": "source"},
                       overwrite=True)
    noisy = images + rng.normal(0, 0.05, images.shape).astype(np.float32)
    tgt = write_domain(folder / "target.h5", noisy, labels, ids, attrs={"domain": "target"},
                       overwrite=True)
    return src, tgt


# --------------------------------------------------------------------------- config


def compose_config(model: str, method: str, args: argparse.Namespace, device: torch.device,
                   paths: tuple[Path, Path], out_dir: Path):
    """The app's config as `python -m galda.run model=... method=...` composes it."""
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
        f"data.channels_last={str(bool(args.channels_last)).lower()}",
        f"data.on_device={str(bool(args.on_device)).lower()}",
        f"paths.output_dir={out_dir}",
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


# --------------------------------------------------------------------------- reference


class ReferenceLoop:
    """The same network, data, loss, optimiser and schedule as a hand-written PyTorch loop.

    Built from the same composed config: the network from ``cfg.model.net`` (same seed, so the
    same initial weights), the losses from ``galda.losses`` and the discriminator from
    ``galda.models.discriminator``, Adam + OneCycleLR from ``cfg.optim`` with the same parameter
    groups and learning-rate multipliers. Batches are drawn from the DataModule's own training
    tensors by one ``randperm`` slice per domain. :meth:`step` does one training step.
    """

    def __init__(self, cfg, datamodule, total_steps: int, device: torch.device) -> None:
        from hydra.utils import instantiate

        from galda.losses import MMDLoss
        from galda.models.discriminator import DomainDiscriminator

        self.method = method = str(cfg.method.name)
        mcfg = self.mcfg = cfg.method.module
        if float(mcfg.get("fisher_weight", 0)) or float(mcfg.get("entropy_weight", 0)):
            raise SystemExit("the reference loop covers fisher_weight = entropy_weight = 0 only")
        seed = int(cfg.seed)
        torch.manual_seed(seed)
        np.random.seed(seed)
        net = instantiate(cfg.model.net)
        groups = list(net.parameter_groups())
        self.discriminator = self.mmd = None
        if method == "dann":
            self.discriminator = DomainDiscriminator(
                net.feature_dim, hidden=int(mcfg.discriminator_hidden),
                dropout=float(mcfg.discriminator_dropout)).to(device).train()
            groups.append({"params": list(self.discriminator.parameters()),
                           "lr_mult": float(mcfg.discriminator_lr_mult)})
        elif method == "mmd":
            self.mmd = MMDLoss(bandwidths=mcfg.bandwidths, unbiased=bool(mcfg.unbiased),
                               n_kernels=int(mcfg.n_kernels), multiplier=float(mcfg.multiplier))
        elif method != "baseline":
            raise SystemExit(f"no reference loop for method {method!r}")
        self.uses_target = method != "baseline"
        self.weight = float(mcfg.get("transfer_weight", 1.0))
        memfmt = torch.channels_last if cfg.data.get("channels_last") else torch.contiguous_format
        self.net = net.to(device, memory_format=memfmt).train()

        base_lr = float(cfg.optim.optimizer.lr)
        param_groups = [{"params": g["params"], "lr": base_lr * float(g.get("lr_mult", 1.0))}
                        for g in groups]
        self.optimizer = instantiate(cfg.optim.optimizer)(params=param_groups)
        self.total = total_steps
        self.scheduler = instantiate(cfg.optim.scheduler)(
            optimizer=self.optimizer, max_lr=[g["lr"] for g in param_groups],
            total_steps=total_steps + 1)  # +1 as the package does

        precision = str(cfg.trainer.get("precision", "32-true"))
        amp = device.type == "cuda" and precision.startswith("16")
        self.scaler = torch.amp.GradScaler("cuda") if amp else None
        self.autocast = ((lambda: torch.autocast("cuda", dtype=torch.float16)) if amp
                         else contextlib.nullcontext)
        self.device = device
        self.src = datamodule.datasets["source"]["train"]
        self.tgt = datamodule.datasets["target"]["train"]
        self.bs = datamodule.batch_size
        self.n_batches = min(len(self.src), len(self.tgt)) // self.bs  # drop_last, like the package
        self.pin = device.type == "cuda" and self.src.images.device.type == "cpu"
        self.images_per_step = self.bs * (2 if self.uses_target else 1)
        self.step_count = 0
        self._batch = self.n_batches  # start a new epoch on the first step

    def _fetch(self, tensor: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        x = tensor[idx.to(tensor.device)]
        if self.pin:
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    def step(self) -> None:
        from galda.losses import domain_adversarial_loss, grad_reverse, reversal_coefficient

        bs = self.bs
        if self._batch >= self.n_batches:
            self._perm_s = torch.randperm(len(self.src))
            self._perm_t = torch.randperm(len(self.tgt)) if self.uses_target else None
            self._batch = 0
        b = self._batch
        self._batch += 1
        idx = self._perm_s[b * bs:(b + 1) * bs]
        x_s, y_s = self._fetch(self.src.images, idx), self._fetch(self.src.labels, idx)
        with torch.enable_grad(), self.autocast():
            if self.uses_target:
                x_t = self._fetch(self.tgt.images, self._perm_t[b * bs:(b + 1) * bs])
                features, logits = self.net(torch.cat([x_s, x_t]))
                f_s, f_t = features[:bs], features[bs:]
                logits_s = logits[:bs]
            else:
                f_s, logits_s = self.net(x_s)
            loss = F.cross_entropy(logits_s, y_s)
            if self.mmd is not None:
                loss = loss + self.weight * self.mmd(f_s, f_t)
            elif self.discriminator is not None:
                m = self.mcfg
                coefficient = reversal_coefficient(str(m.schedule), self.step_count / self.total,
                                                   float(m.gamma), float(m.max_coefficient))
                d = self.discriminator(grad_reverse(torch.cat([f_s, f_t]), coefficient))
                loss = loss + self.weight * domain_adversarial_loss(d[:bs], d[bs:])[0]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            if self.scaler is not None:  # backward outside autocast, as Lightning does
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1


# --------------------------------------------------------------------------- package path


def _make_timer_callback(warmup: int, device: torch.device, reference: ReferenceLoop | None):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Per-step wall times of the package's training loop (and of the paired reference).

        A package step is the wall time from one training-batch end to the next: the loader's
        next batch, the transfer, Lightning's hooks and logging, forward, backward, optimiser
        and scheduler. The first batch of every epoch is not timed (its interval holds the
        previous epoch's validation and the new iterators), nor are the first ``warmup`` steps.

        With ``reference``, one reference step runs right after every package step (inside
        this hook, outside the package interval), so each timed package step has a reference
        step next to it in time and machine load cancels pair by pair.
        """

        def __init__(self) -> None:
            self.times: list[float] = []
            self.ref_times: list[float] = []
            self._last: float | None = None

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._last = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync(device)
            now = time.perf_counter()
            timed = self._last is not None and batch_idx > 0 and trainer.global_step > warmup
            if timed:
                self.times.append(now - self._last)
            if reference is not None:
                reference.step()
                sync(device)
                done = time.perf_counter()
                if timed:
                    self.ref_times.append(done - now)
                now = done
            self._last = now

    return StepTimer()


def build_package(cfg, datamodule, steps: int, warmup: int, device: torch.device,
                  reference: ReferenceLoop | None = None):
    """Module and Trainer built as galda.train.train builds them (no logger/checkpoint/bar)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from galda.devices import configure_job_resources
    from galda.train import build_module

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = build_module(cfg)
    timer = _make_timer_callback(warmup, device, reference)
    trainer = instantiate(
        cfg.trainer,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=warmup + steps,
        _convert_="partial",
        **configure_job_resources(cfg.get("pin_devices", "auto")),
    )
    return module, trainer, timer


def run_paired(cfg, datamodule, steps: int, warmup: int, device: torch.device,
               profile_to: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One package fit with a reference step after each package step: (package, reference)."""
    reference = ReferenceLoop(cfg, datamodule, warmup + steps, device)
    module, trainer, timer = build_package(cfg, datamodule, steps, warmup, device, reference)
    images_per_step = datamodule.batch_size * (2 if module.needs_target_batch else 1)
    with MemoryWatch(device) as mem:
        _fit(trainer, module, datamodule, profile_to)
    return (_summary(timer.times, images_per_step, mem),
            _summary(timer.ref_times, reference.images_per_step, mem))


def run_package(cfg, datamodule, steps: int, warmup: int, device: torch.device,
                profile_to: Path | None = None) -> dict[str, Any]:
    """One fit through the package's path alone."""
    module, trainer, timer = build_package(cfg, datamodule, steps, warmup, device)
    images_per_step = datamodule.batch_size * (2 if module.needs_target_batch else 1)
    with MemoryWatch(device) as mem:
        _fit(trainer, module, datamodule, profile_to)
    return _summary(timer.times, images_per_step, mem)


def run_reference(cfg, datamodule, steps: int, warmup: int, device: torch.device) -> dict[str, Any]:
    """The reference loop alone: warmup + steps steps, each timed (first of an epoch excluded)."""
    reference = ReferenceLoop(cfg, datamodule, warmup + steps, device)
    times: list[float] = []
    with MemoryWatch(device) as mem:
        last = None
        while reference.step_count < warmup + steps:
            new_epoch = reference._batch >= reference.n_batches
            reference.step()
            sync(device)
            now = time.perf_counter()
            if last is not None and not new_epoch and reference.step_count > warmup:
                times.append(now - last)
            last = now
    return _summary(times, reference.images_per_step, mem)


def _fit(trainer, module, datamodule, profile_to: Path | None) -> None:
    if profile_to is None:
        trainer.fit(module, datamodule=datamodule)
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        prof.disable()
        prof.dump_stats(str(profile_to))


def _summary(times: list[float], images_per_step: int, mem: MemoryWatch) -> dict[str, Any]:
    """Throughput from the median step time (robust to load bursts) and from the total."""
    total = sum(times)
    n = len(times)
    med = statistics.median(times) if times else float("nan")
    return {
        "steps_timed": n,
        "images_per_step": images_per_step,
        "seconds": total,
        "step_times": times,
        "median_step_s": med,
        "steps_per_s": 1.0 / med if times else float("nan"),
        "images_per_s": images_per_step / med if times else float("nan"),
        "images_per_s_mean": n * images_per_step / total if total > 0 else float("nan"),
        "peak_rss_mib": round(mem.peak_rss, 1),
        "cuda_peak_mib": round(mem.cuda_peak, 1) if mem.cuda_peak is not None else None,
    }


# --------------------------------------------------------------------------- loader, simulator


def bench_loader(datamodule, n_batches: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Batches/s through the DataModule's train_dataloader (CombinedLoader, source + target)."""
    results = []
    results_dev = []
    for _ in range(repeats):
        for to_device in ([False, True] if device.type == "cuda" else [False]):
            loader = datamodule.train_dataloader()
            count = images = 0
            sync(device)
            start = time.perf_counter()
            while count < n_batches:
                for batch, _, _ in iter(loader):
                    x_s, y_s = batch["source"]
                    x_t = batch["target"]
                    if to_device:
                        x_s = x_s.to(device, non_blocking=True)
                        y_s = y_s.to(device, non_blocking=True)
                        x_t = x_t.to(device, non_blocking=True)
                    images += len(x_s) + len(x_t)
                    count += 1
                    if count >= n_batches:
                        break
            sync(device)
            elapsed = time.perf_counter() - start
            (results_dev if to_device else results).append(
                {"batches_per_s": count / elapsed, "images_per_s": images / elapsed})
    out = {
        "batches": n_batches,
        "repeats": repeats,
        "images_per_batch": 2 * datamodule.batch_size,
        "batches_per_s": statistics.median(r["batches_per_s"] for r in results),
        "images_per_s": statistics.median(r["images_per_s"] for r in results),
        "all": results,
    }
    if results_dev:
        out["to_device"] = {
            "batches_per_s": statistics.median(r["batches_per_s"] for r in results_dev),
            "images_per_s": statistics.median(r["images_per_s"] for r in results_dev),
        }
    return out


def bench_simulation(preset: str, workers: int, repeats: int) -> dict[str, Any]:
    try:
        from galda.simulate import simulate_domains
    except Exception as err:  # noqa: BLE001 - the simulator may not exist yet
        return {"status": "skipped", "reason": f"galda.simulate not importable: {type(err).__name__}: {err}"}
    from galda.data.h5format import read_domain

    runs = []
    try:
        for r in range(repeats):
            with tempfile.TemporaryDirectory(prefix="galda-bench-sim-") as tmp:
                out = Path(tmp) / "sim"
                start = time.perf_counter()
                simulate_domains(preset=preset, out=out, seed=1 + r, workers=workers, progress=False)
                elapsed = time.perf_counter() - start
                n = sum(len(read_domain(p, load_images=False).galaxy_id)
                        for p in sorted(out.glob("*.h5")))
            runs.append({"images": n, "seconds": elapsed, "images_per_s": n / elapsed})
    except Exception as err:  # noqa: BLE001 - report, don't fail the benchmark
        return {"status": "failed", "reason": f"{type(err).__name__}: {err}", "runs": runs}
    ips = statistics.median(r["images_per_s"] for r in runs)
    return {
        "status": "ok",
        "preset": preset,
        "workers": workers,
        "repeats": repeats,
        "images": runs[0]["images"],
        "images_counted": "source + target images written",
        "images_per_s": ips,
        "images_per_s_per_core": ips / max(1, workers),
        "runs": runs,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke version: batch 16, 3 steps, 1 repeat (< 1 min)")
    p.add_argument("--models", default=",".join(MODELS), help="comma list (default: %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per row (default 3; quick 1)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"timed steps per repeat (default CPU {CPU_STEPS}, GPU {GPU_STEPS}; quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1; GPU 5)")
    p.add_argument("--batch-size", type=int, default=None, help="images per domain per step (128; quick 16)")
    p.add_argument("--images", type=int, default=None,
                   help="synthetic images per domain (default 2048 CPU, 4096 GPU; quick 256)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--mode", choices=("paired", "separate"), default="paired",
                   help="paired: a reference step after every package step inside one fit "
                        "(load cancels step by step; default); separate: alternating fits")
    p.add_argument("--omp-wait-policy", choices=("passive", "active", "default"), default="passive",
                   help="OMP_WAIT_POLICY for torch's CPU threads unless already set in the "
                        "environment (default passive: robust on shared machines; 'default' "
                        "leaves OpenMP's own)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own, usually one per core)")
    p.add_argument("--channels-last", action="store_true", help="channels-last images and model")
    p.add_argument("--on-device", action="store_true",
                   help="keep the data set on the accelerator (data.on_device=true)")
    p.add_argument("--precision", default=None,
                   help="override trainer.precision (config default: 32-true CPU, 16-mixed GPU)")
    p.add_argument("--loader-batches", type=int, default=None, help="batches per loader repeat (200)")
    p.add_argument("--sim-preset", default="tiny", help="simulator preset timed (default: tiny)")
    p.add_argument("--sim-workers", type=int, default=1)
    p.add_argument("--no-sim", action="store_true", help="skip the simulator row")
    p.add_argument("--no-step-logging", action="store_true",
                   help="diagnostic: make the methods' per-step self.log_dict a no-op, to show "
                        "what Lightning's per-step logging costs (not the package as shipped)")
    p.add_argument("--profile", action="store_true",
                   help="after the timed repeats, profile one package fit per row (cProfile, "
                        "saved next to --out as .pstats)")
    p.add_argument("--out", default=None,
                   help="JSON output (default benchmarks/results/<machine>[-quick].json)")
    args = p.parse_args(argv)
    q = args.quick
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.repeats = args.repeats or (1 if q else 3)
    args.batch_size = args.batch_size or (16 if q else 128)
    if q and not args.images:
        args.images = 256  # otherwise main() picks 2048 (CPU) or 4096 (GPU)
    args.loader_batches = args.loader_batches or (20 if q else 200)
    for name in args.models:
        if name not in MODELS + ("tiny",):
            p.error(f"unknown model {name!r}; options: {', '.join(MODELS + ('tiny',))}")
    for name in args.methods:
        if name not in METHODS:
            p.error(f"unknown method {name!r}; options: {', '.join(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_step_logging:
        from galda.methods.base import MergerClassifier

        MergerClassifier.log_dict = lambda self, *a, **k: None  # diagnostic only
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 132)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            console.print("[red]--device cuda but no CUDA device is available[/red]")
            return 2
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    if not args.images:  # GPU: 22 batches per epoch, fewer untimed epoch boundaries in 55 steps
        args.images = 4096 if device.type == "cuda" else 2048
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (5 if device.type == "cuda" else 1))

    def steps_for(model: str) -> int:
        if args.steps:
            return args.steps
        if args.quick:
            return 3
        return GPU_STEPS if device.type == "cuda" else CPU_STEPS.get(model, 8)

    info = machine_info(device)
    slug = machine_slug(info) + ("-channels-last" if args.channels_last else "") + (
        "-no-step-logging" if args.no_step_logging else "") + (
        "-quick" if args.quick else "")
    out_path = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"{slug}.json"
    started = time.time()
    console.print(f"[bold]galda benchmark[/bold] on {info['device']} — {info['cpu_model']}, "
                  f"{info['cores']} cores, torch threads {info['torch_threads']}"
                  + (f", GPU {info['gpu']['name']}" if info["gpu"] else ""))

    from hydra.utils import instantiate

    report: dict[str, Any] = {
        "schema": 1,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": git_commit(),
        "machine": info,
        "versions": versions(),
        "settings": {
            "quick": args.quick, "device": str(device), "batch_per_domain": args.batch_size,
            "repeats": args.repeats, "warmup_steps": warmup,
            "steps": {m: steps_for(m) for m in args.models},
            "images_per_domain": args.images, "channels_last": args.channels_last,
            "on_device": args.on_device, "precision_override": args.precision,
            "threads_override": args.threads, "mode": args.mode,
            "no_step_logging_diagnostic": args.no_step_logging,
            "images_counted": ("images forwarded per step: source + target (128 + 128) for "
                               "mmd/dann, source only (128) for baseline"),
            "timing": ("per-step wall times (package: training-batch end to the next, incl. data "
                       "fetch, transfer, hooks and logging; reference: one hand-written step incl. "
                       "its batch fetch) after the warm-up steps, first batch of each epoch "
                       "excluded; images/s = images per step / median step time, median over "
                       "repeats; ratio = median over step pairs (paired mode: a reference step "
                       "right after each package step) or over repeats (separate mode)"),
        },
        "training": [],
    }

    with tempfile.TemporaryDirectory(prefix="galda-bench-") as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        paths = make_synthetic_data(tmp / "data", args.images)
        report["settings"]["data_write_s"] = round(time.perf_counter() - t0, 2)

        # One DataModule for every row (the data do not depend on model or method).
        cfg0 = compose_config(args.models[0], args.methods[0], args, device, paths, tmp / "run")
        apply_torch_flags(cfg0)
        datamodule = instantiate(cfg0.data, _convert_="all")
        t0 = time.perf_counter()
        datamodule.setup("fit")
        report["settings"]["datamodule_setup_s"] = round(time.perf_counter() - t0, 2)
        report["settings"]["split_sizes"] = datamodule.split_sizes
        n_train = min(datamodule.split_sizes[d]["train"] for d in ("source", "target"))
        batches_per_epoch = n_train // args.batch_size
        report["settings"]["train_batches_per_epoch"] = batches_per_epoch

        for model in args.models:
            steps = steps_for(model)
            # Process-level warm-up (kernels, allocator, lazy imports), untimed: one short fit
            # each way with the cheapest method before this model's first timed repeat.
            cfg = compose_config(model, args.methods[0], args, device, paths, tmp / "run")
            run_paired(cfg, datamodule, 2, warmup, device)
            for method in args.methods:
                cfg = compose_config(model, method, args, device, paths, tmp / "run")
                pkg_runs, ref_runs, ratios, step_ratios, diffs = [], [], [], [], []
                for r in range(args.repeats):
                    got = {}
                    if args.mode == "paired":
                        got["package"], got["reference"] = run_paired(cfg, datamodule, steps, warmup, device)
                    else:  # separate fits, order alternating between repeats
                        order = ("package", "reference") if r % 2 == 0 else ("reference", "package")
                        for impl in order:
                            fn = run_package if impl == "package" else run_reference
                            got[impl] = fn(cfg, datamodule, steps, warmup, device)
                    pkg, ref = got["package"], got["reference"]
                    pkg_runs.append(pkg)
                    ref_runs.append(ref)
                    ratios.append(pkg["images_per_s"] / ref["images_per_s"])
                    if args.mode == "paired":
                        # package/reference throughput ratio of each pair of neighbouring steps
                        step_ratios += [(rt / pt) * (pkg["images_per_step"] / ref["images_per_step"])
                                        for pt, rt in zip(pkg["step_times"], ref["step_times"])]
                        diffs += [pt - rt for pt, rt in zip(pkg["step_times"], ref["step_times"])]
                    else:
                        diffs.append(pkg["median_step_s"] - ref["median_step_s"])
                    console.print(
                        f"  {model:9s} {method:8s} repeat {r + 1}/{args.repeats}: package "
                        f"{pkg['images_per_s']:8.1f} img/s, reference {ref['images_per_s']:8.1f} "
                        f"img/s, ratio {ratios[-1]:.3f} ({pkg['steps_timed']} steps)")
                row = {
                    "model": model,
                    "method": method,
                    "images_per_step": pkg_runs[0]["images_per_step"],
                    "steps": steps,
                    "warmup": warmup,
                    "mode": args.mode,
                    "package": _median_row(pkg_runs),
                    "reference": _median_row(ref_runs),
                    "ratio": statistics.median(step_ratios if step_ratios else ratios),
                    "ratio_per_repeat": ratios,
                    "ratio_spread": _quartiles(step_ratios if step_ratios else ratios),
                    # package step time minus reference step time (median over pairs/repeats)
                    "overhead_ms_per_step": 1000 * statistics.median(diffs),
                }
                row["ratio_of_medians"] = row["package"]["images_per_s"] / row["reference"]["images_per_s"]
                if args.profile:
                    prof = out_path.with_name(f"{out_path.stem}-{model}-{method}.pstats")
                    prof.parent.mkdir(parents=True, exist_ok=True)
                    run_package(cfg, datamodule, steps, warmup, device, profile_to=prof)
                    row["profile"] = str(prof)
                    console.print(f"  profile: {prof} (python -m pstats {prof}; sort cumtime)")
                report["training"].append(row)
                write_json_atomic(out_path, report)  # partial results survive an interruption

        # Data loader alone.
        loader = bench_loader(datamodule, args.loader_batches, args.repeats, device)
        for row in report["training"]:
            row["loader_over_training"] = loader["batches_per_s"] / row["package"]["steps_per_s"]
        fastest = max(report["training"], key=lambda r: r["package"]["steps_per_s"], default=None)
        loader["fastest_training_row"] = (f"{fastest['model']}/{fastest['method']}" if fastest else None)
        loader["over_fastest_training"] = (loader["batches_per_s"] / fastest["package"]["steps_per_s"]
                                           if fastest else None)
        report["dataloader"] = loader

    # Simulator (last: it is written by another part of the project and may not exist yet).
    report["simulation"] = ({"status": "skipped", "reason": "--no-sim"} if args.no_sim else
                            bench_simulation(args.sim_preset, args.sim_workers,
                                             1 if args.quick else min(2, args.repeats)))
    report["memory"] = {"peak_rss_mib_process": round(peak_rss_mib_process(), 1)}
    if device.type == "cuda":
        report["memory"]["cuda_max_allocated_mib_last_row"] = report["training"][-1]["package"]["cuda_peak_mib"] if report["training"] else None
    report["acceptance"] = _acceptance(report, device)
    report["wall_time_s"] = round(time.time() - started, 1)
    report["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_json_atomic(out_path, report)

    table = Table(title=f"galda training throughput ({info['device']}, batch {args.batch_size}+"
                        f"{args.batch_size}, median of {args.repeats})")
    for col in ("model", "method", "img/step", "package img/s", "reference img/s",
                "package/reference", "overhead ms/step", "loader/training", "peak RSS MiB"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    if device.type == "cuda":
        table.add_column("CUDA peak MiB", justify="right")
    for row in report["training"]:
        cells = [row["model"], row["method"], str(row["images_per_step"]),
                 f"{row['package']['images_per_s']:.1f}", f"{row['reference']['images_per_s']:.1f}",
                 f"{row['ratio']:.3f}", f"{row['overhead_ms_per_step']:+.1f}",
                 f"{row['loader_over_training']:.0f}x",
                 f"{row['package']['peak_rss_mib']:.0f}"]
        if device.type == "cuda":
            cells.append(f"{row['package']['cuda_peak_mib']:.0f}")
        table.add_row(*cells)
    console.print(table)
    ld = report["dataloader"]
    console.print(f"data loader alone: {ld['batches_per_s']:.1f} batches/s = {ld['images_per_s']:.0f} "
                  f"images/s ({ld['over_fastest_training']:.0f}x the fastest training row, "
                  f"{ld['fastest_training_row']})"
                  + (f"; with transfer to {device}: {ld['to_device']['images_per_s']:.0f} images/s"
                     if "to_device" in ld else ""))
    sim = report["simulation"]
    if sim.get("status") == "ok":
        console.print(f"simulation ({sim['preset']}, {sim['workers']} worker): "
                      f"{sim['images_per_s_per_core']:.1f} images/s per core")
    else:
        console.print(f"simulation: {sim.get('status')} ({sim.get('reason')})")
    console.print(f"peak RSS (process): {report['memory']['peak_rss_mib_process']:.0f} MiB; "
                  f"wall time {report['wall_time_s']:.0f} s")
    for key, value in report["acceptance"].items():
        console.print(f"acceptance {key}: {value}")
    console.print(f"wrote {out_path}")
    return 0


def _quartiles(values: list[float]) -> list[float]:
    """[first quartile, third quartile] (both ends for fewer than four values)."""
    if len(values) < 4:
        return [min(values), max(values)] if values else []
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    out = {
        "images_per_s": med("images_per_s"),
        "steps_per_s": med("steps_per_s"),
        "steps_timed": runs[0]["steps_timed"],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "cuda_peak_mib": (max(r["cuda_peak_mib"] for r in runs)
                          if runs[0]["cuda_peak_mib"] is not None else None),
        "images_per_s_mean": statistics.median(r["images_per_s_mean"] for r in runs),
        "all_images_per_s": [r["images_per_s"] for r in runs],
        "step_times": [r["step_times"] for r in runs],
    }
    return out


def _acceptance(report: dict[str, Any], device: torch.device) -> dict[str, Any]:
    rows = report["training"]
    out: dict[str, Any] = {}
    if rows:
        worst = min(rows, key=lambda r: r["ratio"])
        out["package_over_reference_min"] = round(worst["ratio"], 3)
        out["package_over_reference_min_row"] = f"{worst['model']}/{worst['method']}"
        out["package_ge_0.9x_reference"] = all(r["ratio"] >= 0.9 for r in rows)
    ld = report.get("dataloader", {})
    if ld.get("over_fastest_training") is not None:
        out["loader_over_fastest_training"] = round(ld["over_fastest_training"], 1)
        out["loader_ge_10x_training"] = ld["over_fastest_training"] >= 10
    out["device"] = str(device)
    return out


if __name__ == "__main__":
    sys.exit(main())
