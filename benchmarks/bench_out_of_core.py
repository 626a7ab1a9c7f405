"""Loader throughput out-of-core (``galda.data.h5stream``) against in-memory tensors.

A set of ``--ooc-images`` images (default 100,000 of 3×75×75 float32, ~6.8 GB, half source and
half target) is written on the fly to the temporary folder in the streaming layout (one
uncompressed chunk per image, ``DomainWriter(chunk_images=1, compression=None)``), from one
generated block of 1,000 images shifted block by block. Then, batches of 128 + 128 (source +
target, seeded permutations, ``drop_last``) are drawn:

The out-of-core loaders are the DataModule's own: ``DomainAdaptationDataModule(out_of_core=True)``
set up on the two files (galaxy split 0.7 / 0.1 / 0.2, normalisation statistics streamed from
the training rows: ``setup_s``), then ``train_dataloader()`` iterated:

* ``warm``: right after writing, with the files in the page cache as far as memory allows;
* ``cold``: after the files' pages were dropped from the page cache (``posix_fadvise``
  DONTNEED after ``fsync``; best effort), so most reads reach the disk: the case of a set
  larger than memory;
* ``in_memory``: the in-memory path (``ArrayDataset`` of normalised tensors, same sampler) on the
  largest prefix that fits ``--ooc-memory-gib`` (its speed does not depend on the set's size).

Peak RSS is sampled during each pass; the out-of-core passes hold only a few batches.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import MemoryWatch, rss_mib, synthetic_images

NAME = "out_of_core"
BLOCK = 1000


def write_stream_set(folder: Path, n_per_domain: int, size: int = 75) -> dict[str, Path]:
    """Source (labelled) and target files of ``n_per_domain`` images in the streaming layout."""
    from galda.data.h5format import DomainWriter

    base, labels = synthetic_images(BLOCK, seed=11, size=size)
    paths = {}
    for d, domain in enumerate(("source", "target")):
        paths[domain] = folder / f"{domain}.h5"
        with DomainWriter(
            paths[domain],
            n=n_per_domain,
            image_shape=(3, size, size),
            labelled=domain == "source",
            attrs={"domain": domain},
            overwrite=True,
            chunk_images=1,
            compression=None,
        ) as writer:
            for start in range(0, n_per_domain, BLOCK):
                k = min(BLOCK, n_per_domain - start)
                images = base[:k] + np.float32(1e-3 * (start // BLOCK) + 0.1 * d)
                ids = np.arange(start, start + k)
                writer.write(start, images, labels[:k] if domain == "source" else None, ids)
    return paths


def drop_page_cache(path: Path) -> bool:
    """Ask the kernel to forget the file's cached pages (written back first); True if asked."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def stream_loaders(paths: dict[str, Path], batch: int, seed: int) -> tuple[dict[str, Any], Any]:
    """The streamed DataModule's training loaders of both domains, and the DataModule."""
    from galda.data.datamodule import DomainAdaptationDataModule
    from galda.data.h5stream import H5StreamDataset

    dm = DomainAdaptationDataModule(
        str(paths["source"]), str(paths["target"]), batch_size=batch, out_of_core=True
    )
    dm.configure_training(target_images=True, target_labels=False)
    dm.setup("fit")
    assert isinstance(dm.datasets["source"]["train"], H5StreamDataset)
    torch.manual_seed(seed)  # the DataModule's shuffle seed follows the torch seed
    return dict(dm.train_dataloader().iterables), dm


def memory_loaders(paths: dict[str, Path], batch: int, seed: int, budget: int) -> tuple[dict, int]:
    """In-memory loaders (as the DataModule builds them) on the largest prefix within budget."""
    from torch.utils.data import DataLoader

    from galda.data.datamodule import ArrayDataset, EpochSeededSampler, identity_collate
    from galda.data.h5stream import H5RowReader

    reader = H5RowReader(paths["source"])
    n = min(reader.shape[0], max(batch, budget // (2 * reader.row_bytes)))
    loaders = {}
    for d, (domain, path) in enumerate(paths.items()):
        images = torch.from_numpy(H5RowReader(path).read(np.arange(n)))
        images.sub_(images.mean()).div_(images.std())
        labels = torch.zeros(n, dtype=torch.long) if domain == "source" else None
        ds = ArrayDataset(images, labels)
        sampler = EpochSeededSampler(n, seed + d)
        loaders[domain] = DataLoader(
            ds, batch_size=batch, sampler=sampler, drop_last=True, collate_fn=identity_collate
        )
    return loaders, n


def time_batches(loaders: dict[str, Any], n_batches: int, device: torch.device) -> dict[str, Any]:
    """Batches/s, images/s and peak RSS of ``n_batches`` source + target batches."""
    from pytorch_lightning.utilities import CombinedLoader

    combined = CombinedLoader(loaders, mode="max_size_cycle")
    count = images = 0
    rss_before = rss_mib()
    with MemoryWatch(device) as mem:
        start = time.perf_counter()
        while count < n_batches:
            for batch, _, _ in iter(combined):
                images += len(batch["source"][0]) + len(batch["target"])
                count += 1
                if count >= n_batches:
                    break
        elapsed = time.perf_counter() - start
    return {
        "batches": count,
        "seconds": elapsed,
        "batches_per_s": count / elapsed,
        "images_per_s": images / elapsed,
        "peak_rss_mib": round(mem.peak_rss, 1),
        "rss_growth_mib": round(mem.peak_rss - rss_before, 1),
    }


def _median_pass(loaders, n_batches: int, repeats: int, device) -> dict[str, Any]:
    runs = [time_batches(loaders, n_batches, device) for _ in range(repeats)]
    best = sorted(runs, key=lambda r: r["batches_per_s"])[len(runs) // 2]
    return {**best, "all_batches_per_s": [r["batches_per_s"] for r in runs]}


def measure(args: argparse.Namespace, paths: dict[str, Path]) -> dict[str, Any]:
    """Cold, warm and in-memory passes over the written set."""
    batch = 16 if args.quick else 128
    n_batches = args.ooc_batches or (20 if args.quick else 200)
    start = time.perf_counter()
    loaders, dm = stream_loaders(paths, batch, seed=5)
    setup_s = time.perf_counter() - start
    warm = _median_pass(loaders, n_batches, args.repeats, args.device)
    cold_ok = all(drop_page_cache(p) for p in paths.values())
    cold = time_batches(loaders, max(5, n_batches // 4), args.device)
    budget = int(args.ooc_memory_gib * 2**30)
    mem_loaders, held = memory_loaders(paths, batch, seed=5, budget=budget)
    in_memory = _median_pass(mem_loaders, n_batches, args.repeats, args.device)
    in_memory["images_held_per_domain"] = held
    del mem_loaders
    return {
        "batch_per_domain": batch,
        "images_per_batch": 2 * batch,
        "path": "DomainAdaptationDataModule(out_of_core=True).train_dataloader()",
        "setup_s": round(setup_s, 2),
        "training_images_per_domain": dm.split_sizes["source"]["train"],
        "cold": {**cold, "page_cache_dropped": cold_ok},
        "warm": warm,
        "in_memory": in_memory,
        "warm_over_in_memory": warm["batches_per_s"] / in_memory["batches_per_s"],
    }


def _compare_with_training(report: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    rows = report.get("training") or []
    fastest = max(rows, key=lambda r: r["package"]["steps_per_s"], default=None)
    if fastest is None:
        return {}
    steps = fastest["package"]["steps_per_s"]
    result["fastest_training_row"] = f"{fastest['model']}/{fastest['method']}"
    result["warm_over_fastest_training"] = result["warm"]["batches_per_s"] / steps
    result["cold_over_fastest_training"] = result["cold"]["batches_per_s"] / steps
    return {
        "out_of_core_over_fastest_training": round(result["warm_over_fastest_training"], 1),
        "out_of_core_ge_10x_training": result["warm_over_fastest_training"] >= 10,
        "out_of_core_cold_over_fastest_training": round(result["cold_over_fastest_training"], 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    total = args.ooc_images or (5000 if args.quick else 100_000)
    folder = args.tmp / "out-of-core"
    start = time.perf_counter()
    paths = write_stream_set(folder, total // 2)
    write_s = time.perf_counter() - start
    try:
        result = measure(args, paths)
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)
    size = 2 * (total // 2) * 3 * 75 * 75 * 4
    result = {
        "status": "ok",
        "images": 2 * (total // 2),
        "data_gib": round(size / 2**30, 2),
        "write_s": round(write_s, 1),
        "layout": "one uncompressed chunk per image",
        **result,
    }
    accept = _compare_with_training(args.report, result)
    w, m, c = result["warm"], result["in_memory"], result["cold"]
    line = (
        f"out-of-core loader ({result['images']:,} images, {result['data_gib']} GiB; "
        f"DataModule setup {result['setup_s']:.1f} s): warm "
        f"{w['batches_per_s']:.1f} batches/s = {w['images_per_s']:.0f} images/s, peak RSS "
        f"{w['peak_rss_mib']:.0f} MiB; cold {c['images_per_s']:.0f} images/s; in-memory "
        f"{m['images_per_s']:.0f} images/s ({m['images_held_per_domain']:,} per domain held)"
    )
    if "warm_over_fastest_training" in result:
        line += (
            f"; warm {result['warm_over_fastest_training']:.0f}x, cold "
            f"{result['cold_over_fastest_training']:.0f}x the fastest training row"
        )
    args.console.print(line)
    return {"out_of_core": result, "acceptance": accept}


def skipped(args: argparse.Namespace) -> dict[str, Any]:
    return {"out_of_core": {"status": "skipped", "reason": "not selected (--only / --skip)"}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ooc-images", type=int, default=None, help="images in all (100000; quick 5000)"
    )
    p.add_argument("--ooc-batches", type=int, default=None, help="batches per pass (200; quick 20)")
    p.add_argument(
        "--ooc-memory-gib", type=float, default=2.0, help="in-memory comparison budget (2 GiB)"
    )
