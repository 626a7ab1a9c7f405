"""Training throughput: the package's real path against a plain PyTorch loop, row by row.

For every model x method: the module from ``galda.train.build_module(cfg)`` in a Lightning
Trainer (logger, checkpointing, progress bar off) and the :class:`ReferenceLoop` on the same
data, config and seed. In the default ``paired`` mode one reference step runs right after every
package step, so machine load cancels pair by pair. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import MemoryWatch, compose_config, feed, quartiles, shared_datamodule, sync
from bench_reference import ReferenceLoop

NAME = "training"
MODELS = ("deepmerge", "resnet18")
METHODS = ("baseline", "mmd", "dann")
# Steps timed per repeat on a CPU (ResNet18 is ~6x slower per step than DeepMerge); on a GPU
# every model gets GPU_STEPS. --steps overrides both.
CPU_STEPS = {"deepmerge": 20, "resnet18": 6}
GPU_STEPS = 50


def steps_for(args: argparse.Namespace, model: str) -> int:
    if args.steps:
        return args.steps
    if args.quick:
        return 3
    return GPU_STEPS if args.device.type == "cuda" else CPU_STEPS.get(model, 8)


def _make_timer_callback(warmup: int, device: torch.device, reference: ReferenceLoop | None):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Per-step wall times of the package's training loop (and of the paired reference).

        A package step is the wall time from one training-batch end to the next: the loader's
        next batch, the transfer, Lightning's hooks and logging, forward, backward, optimiser
        and scheduler. The first batch of every epoch is not timed (its interval holds the
        previous epoch's validation and the new iterators), nor are the first ``warmup`` steps.
        With ``reference``, one reference step runs right after every package step (inside
        this hook, outside the package interval).
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


def build_trainer(cfg, callbacks: list, max_steps: int):
    """The Trainer ``galda.train.train`` builds (``galda.train.build_trainer`` with the job's
    device and thread settings), minus logger, checkpointing, progress bar and summary."""
    from galda.devices import configure_job_resources
    from galda.train import build_trainer as galda_trainer

    return galda_trainer(
        cfg,
        callbacks,
        None,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=max_steps,
        **configure_job_resources(cfg.get("pin_devices", "auto")),
    )


def build_package(cfg, steps: int, warmup: int, device, reference: ReferenceLoop | None = None):
    """(module, trainer, timer): the package's module, its Trainer and the step timer."""
    import pytorch_lightning as pl

    from galda.train import build_module

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = build_module(cfg)
    timer = _make_timer_callback(warmup, device, reference)
    return module, build_trainer(cfg, [timer], warmup + steps), timer


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


def step_summary(times: list[float], images_per_step: int, mem: MemoryWatch) -> dict[str, Any]:
    """Throughput from the median step time (robust to load bursts) and from the total."""
    total, n = sum(times), len(times)
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


def run_paired(cfg, datamodule, steps: int, warmup: int, device, profile_to: Path | None = None):
    """One package fit with a reference step after each package step: (package, reference)."""
    reference = ReferenceLoop(cfg, datamodule, warmup + steps, device)
    module, trainer, timer = build_package(cfg, steps, warmup, device, reference)
    images_per_step = feed(datamodule, module)
    with MemoryWatch(device) as mem:
        _fit(trainer, module, datamodule, profile_to)
    return (
        step_summary(timer.times, images_per_step, mem),
        step_summary(timer.ref_times, reference.images_per_step, mem),
    )


def run_package(cfg, datamodule, steps: int, warmup: int, device, profile_to: Path | None = None):
    """One fit through the package's path alone."""
    module, trainer, timer = build_package(cfg, steps, warmup, device)
    images_per_step = feed(datamodule, module)
    with MemoryWatch(device) as mem:
        _fit(trainer, module, datamodule, profile_to)
    return step_summary(timer.times, images_per_step, mem)


def run_reference(cfg, datamodule, steps: int, warmup: int, device) -> dict[str, Any]:
    """The reference loop alone: warmup + steps steps, each timed (first of an epoch excluded)."""
    reference = ReferenceLoop(cfg, datamodule, warmup + steps, device)
    times: list[float] = []
    with MemoryWatch(device) as mem:
        last = None
        while reference.step_count < warmup + steps:
            new_epoch = reference.starts_epoch
            reference.step()
            sync(device)
            now = time.perf_counter()
            if last is not None and not new_epoch and reference.step_count > warmup:
                times.append(now - last)
            last = now
    return step_summary(times, reference.images_per_step, mem)


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of one implementation's summaries."""

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    cuda = [r["cuda_peak_mib"] for r in runs if r["cuda_peak_mib"] is not None]
    return {
        "images_per_s": med("images_per_s"),
        "steps_per_s": med("steps_per_s"),
        "steps_timed": runs[0]["steps_timed"],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "cuda_peak_mib": max(cuda) if cuda else None,
        "images_per_s_mean": med("images_per_s_mean"),
        "all_images_per_s": [r["images_per_s"] for r in runs],
        "step_times": [r["step_times"] for r in runs],
    }


def _one_repeat(args, cfg, datamodule, steps: int, repeat: int) -> tuple[dict, dict]:
    """(package, reference) summaries of one repeat, in the chosen mode."""
    if args.mode == "paired":
        return run_paired(cfg, datamodule, steps, args.warmup, args.device)
    got = {}  # separate fits, order alternating between repeats
    order = ("package", "reference") if repeat % 2 == 0 else ("reference", "package")
    for impl in order:
        fn = run_package if impl == "package" else run_reference
        got[impl] = fn(cfg, datamodule, steps, args.warmup, args.device)
    return got["package"], got["reference"]


def measure_row(args, cfg, datamodule, model: str, method: str) -> dict[str, Any]:
    """All repeats of one model x method row, with ratio, spread and overhead per step."""
    steps = steps_for(args, model)
    pkg_runs, ref_runs, ratios, step_ratios, diffs = [], [], [], [], []
    for r in range(args.repeats):
        pkg, ref = _one_repeat(args, cfg, datamodule, steps, r)
        pkg_runs.append(pkg)
        ref_runs.append(ref)
        ratios.append(pkg["images_per_s"] / ref["images_per_s"])
        pairs = list(zip(pkg["step_times"], ref["step_times"]))
        if args.mode == "paired":  # package/reference throughput ratio of neighbouring steps
            scale = pkg["images_per_step"] / ref["images_per_step"]
            step_ratios += [(rt / pt) * scale for pt, rt in pairs]
            diffs += [pt - rt for pt, rt in pairs]
        else:
            diffs.append(pkg["median_step_s"] - ref["median_step_s"])
        args.console.print(
            f"  {model:9s} {method:8s} repeat {r + 1}/{args.repeats}: package "
            f"{pkg['images_per_s']:8.1f} img/s, reference {ref['images_per_s']:8.1f} "
            f"img/s, ratio {ratios[-1]:.3f} ({pkg['steps_timed']} steps)"
        )
    ratio_values = step_ratios or ratios
    row = {
        "model": model,
        "method": method,
        "images_per_step": pkg_runs[0]["images_per_step"],
        "steps": steps,
        "warmup": args.warmup,
        "mode": args.mode,
        "package": median_row(pkg_runs),
        "reference": median_row(ref_runs),
        "ratio": statistics.median(ratio_values),
        "ratio_per_repeat": ratios,
        "ratio_spread": quartiles(ratio_values),
        "overhead_ms_per_step": 1000 * statistics.median(diffs),  # package minus reference
    }
    row["ratio_of_medians"] = row["package"]["images_per_s"] / row["reference"]["images_per_s"]
    return row


def _profile_row(args, cfg, datamodule, model: str, method: str) -> str:
    prof = args.out_path.with_name(f"{args.out_path.stem}-{model}-{method}.pstats")
    prof.parent.mkdir(parents=True, exist_ok=True)
    run_package(cfg, datamodule, steps_for(args, model), args.warmup, args.device, prof)
    args.console.print(f"  profile: {prof} (python -m pstats {prof}; sort cumtime)")
    return str(prof)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every model x method row; the report is saved after each row."""
    if args.no_step_logging:
        _no_step_logging()
    datamodule = shared_datamodule(args)
    paths, out_dir = args.shared["paths"], args.tmp / "run"
    rows = args.report.setdefault("training", [])
    for model in args.models:
        # Process-level warm-up (kernels, allocator, lazy imports), untimed: one short paired
        # fit with the cheapest method before this model's first timed repeat.
        cfg = compose_config(model, args.methods[0], args, args.device, paths, out_dir)
        run_paired(cfg, datamodule, 2, args.warmup, args.device)
        for method in args.methods:
            cfg = compose_config(model, method, args, args.device, paths, out_dir)
            row = measure_row(args, cfg, datamodule, model, method)
            if args.profile:
                row["profile"] = _profile_row(args, cfg, datamodule, model, method)
            rows.append(row)
            args.save()  # partial results survive an interruption
    print_table(args, rows)
    return {"training": rows, "acceptance": acceptance(rows)}


def acceptance(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {}
    worst = min(rows, key=lambda r: r["ratio"])
    return {
        "package_over_reference_min": round(worst["ratio"], 3),
        "package_over_reference_min_row": f"{worst['model']}/{worst['method']}",
        "package_ge_0.9x_reference": all(r["ratio"] >= 0.9 for r in rows),
    }


def print_table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    cuda = args.device.type == "cuda"
    table = Table(
        title=f"galda training throughput ({args.device}, batch {args.batch_size}+"
        f"{args.batch_size}, median of {args.repeats})"
    )
    columns = ["model", "method", "img/step", "package img/s", "reference img/s"]
    columns += ["package/reference", "overhead ms/step", "peak RSS MiB"]
    for col in columns + (["CUDA peak MiB"] if cuda else []):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for row in rows:
        pkg = row["package"]
        cells = [row["model"], row["method"], str(row["images_per_step"])]
        cells += [f"{pkg['images_per_s']:.1f}", f"{row['reference']['images_per_s']:.1f}"]
        cells += [f"{row['ratio']:.3f}", f"{row['overhead_ms_per_step']:+.1f}"]
        cells += [f"{pkg['peak_rss_mib']:.0f}"] + ([f"{pkg['cuda_peak_mib']:.0f}"] if cuda else [])
        table.add_row(*cells)
    args.console.print(table)


def check(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """Split and validate --models / --methods."""
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in args.models:
        if name not in (*MODELS, "tiny"):
            p.error(f"unknown model {name!r}; options: {', '.join((*MODELS, 'tiny'))}")
    for name in args.methods:
        if name not in METHODS:
            p.error(f"unknown method {name!r}; options: {', '.join(METHODS)}")


def _no_step_logging() -> None:
    """Diagnostic only: the methods' per-step ``self.log_dict`` becomes a no-op."""
    from galda.methods.base import MergerClassifier

    MergerClassifier.log_dict = lambda self, *a, **k: None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=",".join(MODELS), help="comma list (default: %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list (default: %(default)s)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timed steps per repeat (default CPU {CPU_STEPS}, GPU {GPU_STEPS}; quick 3)",
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (1; GPU 5)")
    p.add_argument(
        "--mode",
        choices=("paired", "separate"),
        default="paired",
        help="paired: a reference step after every package step inside one fit "
        "(load cancels step by step; default); separate: alternating fits",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the timed repeats, profile one package fit per row (cProfile, "
        "saved next to --out as .pstats)",
    )
    p.add_argument(
        "--no-step-logging",
        action="store_true",
        help="diagnostic: make the methods' per-step self.log_dict a no-op, to show "
        "what Lightning's per-step logging costs (not the package as shipped)",
    )
