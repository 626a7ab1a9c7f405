#!/usr/bin/env python
"""Throughput benchmarks of galda, in one process and one run (``make bench``).

Each benchmark is a module ``benchmarks/bench_<name>.py`` exposing ``NAME`` and
``run(args) -> dict`` (sections merged into the JSON report), and optionally
``add_arguments(parser)``, ``check(args, parser)`` (validate / fill defaults after parsing) and
``skipped(args) -> dict`` (what the report holds when it is not selected), and ``DEFAULT``
(``False``: runs only when named in ``--only``). They run in the order
of :data:`BENCHMARKS`; adding one is one import and one entry there. ``args`` carries the parsed
options plus ``device``, ``warmup``, ``tmp`` (a temporary folder), ``console`` (rich),
``report`` (the report so far), ``shared`` (objects modules share, e.g. the DataModule),
``save()`` (write the report now) and ``out_path``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_host_memory  # noqa: E402
import bench_loader  # noqa: E402
import bench_memory  # noqa: E402
import bench_out_of_core  # noqa: E402
import bench_peers  # noqa: E402
import bench_predict  # noqa: E402
import bench_simulation  # noqa: E402
import bench_training  # noqa: E402
import torch  # noqa: E402
from bench_common import REPO, quiet, write_json_atomic  # noqa: E402
from bench_machine import load_average, machine_info, machine_slug, versions  # noqa: E402


class Standalone:
    """A benchmark written as its own script (``run(options) -> report``, own ``add_arguments``)
    in the registry: its report goes under ``NAME``, its acceptance keys get ``NAME_`` in front,
    and of its options only those run.py does not have already are added (the shared ones —
    quick, device, threads — are passed on; its batch size and repeats keep its defaults)."""

    def __init__(self, module: Any, name: str, default: bool = True) -> None:
        self.module, self.NAME, self.DEFAULT = module, name, default
        self._dests: list[str] = []

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        own = argparse.ArgumentParser(add_help=False)
        self.module.add_arguments(own)
        taken = set(p._option_string_actions)
        for action in own._actions:
            if not taken & set(action.option_strings):
                p._add_action(action)
                self._dests.append(action.dest)

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        options = {d: getattr(args, d) for d in self._dests}
        options.update(quick=args.quick, device=args.device.type, threads=args.threads)
        report = self.module.run(options)
        accept = report.pop("acceptance", {}) or {}
        report.pop("machine", None)  # the run's own machine record covers it
        args.console.print(f"{self.NAME}: {json.dumps(accept)}")
        return {self.NAME: report, "acceptance": {f"{self.NAME}_{k}": v for k, v in accept.items()}}

    def skipped(self, args: argparse.Namespace) -> dict[str, Any]:
        return {self.NAME: {"status": "skipped", "reason": "not selected (--only / --skip)"}}


#: The benchmarks, in running order (later ones may read what earlier ones reported; memory
#: stays last, as it reads the process's peak).
BENCHMARKS = [
    bench_training,
    bench_loader,
    bench_out_of_core,
    bench_peers,
    # opt-in (`--only ...,predict`): its 200,000-image memory run writes a 13 GiB file
    Standalone(bench_predict, "predict", default=False),
    bench_simulation,
    bench_host_memory,
    bench_memory,
]
# Kept from the previous single-file script for benchmarks/channels_last.py and old callers.
CPU_STEPS = bench_training.CPU_STEPS
MODELS, METHODS = bench_training.MODELS, bench_training.METHODS


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smoke version: seconds, not minutes")
    p.add_argument("--repeats", type=int, default=None, help="repeats per row (default 3; quick 1)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="per domain per step (128; quick 16)"
    )
    p.add_argument(
        "--images", type=int, default=None, help="synthetic images per domain (2048 CPU, 4096 GPU)"
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active", "default"),
        default="passive",
        help="OMP_WAIT_POLICY for torch's CPU threads unless already set in the environment "
        "(default passive: robust on shared machines; 'default' leaves OpenMP's own)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's allocator as it is (default: reuse_host_memory, as galda.train does; "
        "process-wide, so the plain loop and skada run with it too)",
    )
    p.add_argument(
        "--channels-last",
        nargs="?",
        const="true",
        default="auto",
        choices=["auto", "true", "false"],
        help="data.channels_last: auto (the package default: channels-last on the CPU), true, false",
    )
    p.add_argument("--on-device", action="store_true", help="data.on_device=true")
    p.add_argument("--precision", default=None, help="override trainer.precision")
    names = ", ".join(m.NAME for m in BENCHMARKS)
    p.add_argument("--only", default=None, help=f"comma list of benchmarks to run ({names})")
    p.add_argument("--skip", default="", help="comma list of benchmarks to leave out")
    p.add_argument("--out", default=None, help="JSON (default benchmarks/results/<machine>.json)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _common_arguments(p)
    for module in BENCHMARKS:
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.batch_size = args.batch_size or (16 if args.quick else 128)
    if args.quick and not args.images:
        args.images = 256
    known = {m.NAME for m in BENCHMARKS}
    args.only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    args.skip = [n.strip() for n in args.skip.split(",") if n.strip()]
    for name in (args.only or []) + args.skip:
        if name not in known:
            p.error(f"unknown benchmark {name!r}; options: {', '.join(sorted(known))}")
    for module in BENCHMARKS:
        if hasattr(module, "check"):
            module.check(args, p)
    return args


def selected(args: argparse.Namespace) -> list[Any]:
    """The benchmark modules this run executes, in order."""
    skip = set(args.skip) | ({"simulation"} if getattr(args, "no_sim", False) else set())
    wanted = [
        m
        for m in BENCHMARKS
        if (m.NAME in args.only if args.only is not None else getattr(m, "DEFAULT", True))
    ]
    return [m for m in wanted if m.NAME not in skip]


def resolve_device(args: argparse.Namespace) -> torch.device | None:
    """The device to run on, or None (after a message) when CUDA was asked for but is absent."""
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        return None
    device = torch.device(args.device)
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" else device


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "quick": args.quick,
        "device": str(args.device),
        "benchmarks": [m.NAME for m in selected(args)],
        "batch_per_domain": args.batch_size,
        "repeats": args.repeats,
        "warmup_steps": args.warmup,
        "steps": {m: bench_training.steps_for(args, m) for m in args.models},
        "images_per_domain": args.images,
        "channels_last": args.channels_last,
        "on_device": args.on_device,
        "precision_override": args.precision,
        "threads_override": args.threads,
        "reuse_host_memory_mmap_threshold": getattr(args, "mmap_threshold", None),
        "mode": args.mode,
        "no_step_logging_diagnostic": args.no_step_logging,
        "images_counted": "images forwarded per step: source + target (128 + 128) for "
        "mmd/dann, source only (128) for baseline",
        "timing": "per-step wall times (package: training-batch end to the next, incl. data "
        "fetch, transfer, hooks and logging; reference: one hand-written step incl. its batch "
        "fetch) after the warm-up steps, first batch of each epoch excluded; images/s = images "
        "per step / median step time, median over repeats; ratio = median over step pairs "
        "(paired mode: a reference step right after each package step) or over repeats "
        "(separate mode)",
    }


def new_report(args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    from bench_machine import git_commit

    return {
        "schema": 1,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": git_commit(),
        "machine": info,
        "versions": versions(),
        "settings": _settings(args),
        "training": [],
    }


def merge(report: dict[str, Any], sections: dict[str, Any]) -> None:
    """Put a module's sections into the report; ``settings`` and ``acceptance`` are merged."""
    for key, value in sections.items():
        if key in ("settings", "acceptance") and isinstance(value, dict):
            report.setdefault(key, {}).update(value)
        else:
            report[key] = value


def _prepare(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Fill the run-wide fields of ``args``; return the machine description."""
    args.device = device
    if not args.images:  # GPU: 22 batches per epoch, fewer untimed epoch boundaries in 55 steps
        args.images = 4096 if device.type == "cuda" else 2048
    if args.warmup is None:
        args.warmup = 1 if args.quick or device.type != "cuda" else 5
    info = machine_info(device)
    slug = machine_slug(info) + {"true": "-channels-last", "false": "-nchw"}.get(
        args.channels_last, ""
    )
    slug += ("-no-step-logging" if args.no_step_logging else "") + ("-quick" if args.quick else "")
    args.out_path = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"{slug}.json"
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    from galda.host_memory import reuse_freed_memory

    args.mmap_threshold = None if args.system_malloc else reuse_freed_memory()
    from rich.console import Console

    args.console = Console(width=None if sys.stdout.isatty() else 132)
    device = resolve_device(args)
    if device is None:
        args.console.print("[red]--device cuda but no CUDA device is available[/red]")
        return 2
    info = _prepare(args, device)
    started = time.time()
    args.console.print(
        f"[bold]galda benchmark[/bold] on {info['device']} — {info['cpu_model']}, "
        f"{info['cores']} cores, torch threads {info['torch_threads']}"
        + (f", GPU {info['gpu']['name']}" if info["gpu"] else "")
    )
    report = args.report = new_report(args, info)
    args.shared = {}
    args.save = lambda: write_json_atomic(args.out_path, report)
    chosen = selected(args)
    with tempfile.TemporaryDirectory(prefix="galda-bench-") as tmp:
        args.tmp = Path(tmp)
        for module in BENCHMARKS:
            if module in chosen:
                merge(report, module.run(args))
            elif hasattr(module, "skipped"):
                merge(report, module.skipped(args))
            args.save()
        args.shared.clear()
    report.setdefault("acceptance", {})["device"] = str(device)
    report["wall_time_s"] = round(time.time() - started, 1)
    report["machine"]["load_average_at_end"] = load_average()
    args.save()
    for key, value in report["acceptance"].items():
        args.console.print(f"acceptance {key}: {value}")
    args.console.print(f"wall time {report['wall_time_s']:.0f} s; wrote {args.out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
