"""The data loader alone: the DataModule's ``train_dataloader()`` (source + target batches).

Reported in batches/s and images/s, and against the training rows measured before it
(``loader_over_training`` on each row; the acceptance uses the fastest row).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from bench_common import shared_datamodule, sync

NAME = "loader"


def _iterate(datamodule, n_batches: int, device: torch.device, to_device: bool) -> dict:
    """Batches/s and images/s of ``n_batches`` batches, epochs restarting as needed."""
    datamodule.train_domains = ("source", "target")  # 128 + 128, as MMD and DANN train
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
    return {"batches_per_s": count / elapsed, "images_per_s": images / elapsed}


def bench_loader(datamodule, n_batches: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Median over repeats; on a GPU also with the transfer to the device."""
    host, dev = [], []
    for _ in range(repeats):
        host.append(_iterate(datamodule, n_batches, device, False))
        if device.type == "cuda":
            dev.append(_iterate(datamodule, n_batches, device, True))
    out = {
        "batches": n_batches,
        "repeats": repeats,
        "images_per_batch": 2 * datamodule.batch_size,
        "batches_per_s": statistics.median(r["batches_per_s"] for r in host),
        "images_per_s": statistics.median(r["images_per_s"] for r in host),
        "all": host,
    }
    if dev:
        out["to_device"] = {
            "batches_per_s": statistics.median(r["batches_per_s"] for r in dev),
            "images_per_s": statistics.median(r["images_per_s"] for r in dev),
        }
    return out


def fastest_training_row(report: dict[str, Any]) -> dict[str, Any] | None:
    """The training row with the most package steps per second, if any row was measured."""
    rows = report.get("training") or []
    return max(rows, key=lambda r: r["package"]["steps_per_s"], default=None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    datamodule = shared_datamodule(args)
    n_batches = args.loader_batches or (20 if args.quick else 200)
    loader = bench_loader(datamodule, n_batches, args.repeats, args.device)
    for row in args.report.get("training") or []:
        row["loader_over_training"] = loader["batches_per_s"] / row["package"]["steps_per_s"]
    fastest = fastest_training_row(args.report)
    loader["fastest_training_row"] = f"{fastest['model']}/{fastest['method']}" if fastest else None
    over = loader["batches_per_s"] / fastest["package"]["steps_per_s"] if fastest else None
    loader["over_fastest_training"] = over
    line = (
        f"data loader alone: {loader['batches_per_s']:.1f} batches/s = "
        f"{loader['images_per_s']:.0f} images/s"
    )
    if fastest:
        line += f" ({over:.0f}x the fastest training row, {loader['fastest_training_row']})"
    if "to_device" in loader:
        line += (
            f"; with transfer to {args.device}: {loader['to_device']['images_per_s']:.0f} images/s"
        )
    args.console.print(line)
    accept = {}
    if over is not None:
        accept = {
            "loader_over_fastest_training": round(over, 1),
            "loader_ge_10x_training": over >= 10,
        }
    return {"dataloader": loader, "acceptance": accept}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loader-batches", type=int, default=None, help="batches per repeat (200)")
