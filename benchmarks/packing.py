#!/usr/bin/env python
"""How many training processes one GPU holds: aggregate throughput of N processes at once.

Each of N worker processes runs the same plain training step (galda's network; a 128 source +
128 target batch forwarded, cross-entropy on the source half; Adam; the GPU trainer's 16-bit
autocast and gradient scaler) on its own synthetic images resident on the device, for a time window
that starts at the same instant in all of them. The aggregate images/s for N = 1, 2, 4, ... shows
where the GPU saturates; the smallest N within 10 % of the best aggregate is the suggested
``jobs_per_gpu`` (``hydra/launcher=gpus``). A plain step spends less time in Python than the
package's (Lightning's hooks: 4-6 ms a step on an H200), so the package fills the GPU at the same
or a larger N: the suggestion is a lower bound. Each worker gets ``cores // N`` torch threads, as
the launcher gives each job.

    python benchmarks/packing.py --device cuda --counts 1,2,4,8,12 --seconds 5 --out packing.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import sys
import time
from pathlib import Path
from typing import Any

SATURATION = 0.9  # the suggestion: smallest N reaching this fraction of the best aggregate


def _build(opts: dict[str, Any]):
    import torch

    from galda.models import DeepMerge, ResNet18Merger

    net = DeepMerge() if opts["model"] == "deepmerge" else ResNet18Merger()
    return net.to(torch.device(opts["device"]))


def _worker(rank: int, opts: dict[str, Any], commands: Any, results: Any) -> None:
    """Build a model and data, warm up, then run timed windows on command until told to stop."""
    try:
        import torch
        import torch.nn.functional as F

        torch.manual_seed(rank)
        device = torch.device(opts["device"])
        cuda = device.type == "cuda"
        torch.backends.cudnn.benchmark = True
        net = _build(opts)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=cuda)
        n, batch = opts["images"], opts["batch"]
        images = torch.randn(2 * n, 3, 75, 75, device=device)
        labels = torch.randint(0, 2, (n,), device=device)

        def step() -> None:
            idx = torch.randint(0, n, (batch,), device=device)
            x = torch.cat([images[idx], images[n + idx]])
            with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
                _, logits = net(x)
                loss = F.cross_entropy(logits[:batch].float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        for _ in range(opts["warmup"]):
            step()
        if cuda:
            torch.cuda.synchronize()
        mem = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
        results.put(("ready", rank, mem))
        while True:
            cmd = commands.get()
            if cmd is None:
                return
            start, seconds, threads = cmd
            torch.set_num_threads(threads)
            time.sleep(max(0.0, start - time.time()))
            steps, end = 0, start + seconds
            while time.time() < end:
                step()
                steps += 1
            if cuda:
                torch.cuda.synchronize()
            results.put(("done", rank, steps, time.time() - start))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which goes on without us
        results.put(("error", rank, f"{type(err).__name__}: {err}"))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def suggest(rows: list[dict[str, Any]]) -> int | None:
    """Smallest N whose aggregate images/s is within ``SATURATION`` of the best."""
    valid = [r for r in rows if r.get("aggregate_images_per_s")]
    if not valid:
        return None
    best = max(r["aggregate_images_per_s"] for r in valid)
    return min(r["n"] for r in valid if r["aggregate_images_per_s"] >= SATURATION * best)


def measure(
    opts: dict[str, Any], counts: list[int], seconds: float, ready_timeout: float = 120.0
) -> dict[str, Any]:
    """Start max(counts) workers, then time each count N with the first N workers at once."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    workers, commands = [], []
    for rank in range(max(counts)):
        q = ctx.Queue()
        p = ctx.Process(target=_worker, args=(rank, opts, q, results), daemon=True)
        p.start()
        workers.append(p)
        commands.append(q)
    ready, memory, errors = set(), {}, []
    deadline = time.time() + ready_timeout
    while len(ready) + len(errors) < len(workers) and time.time() < deadline:
        try:
            msg = results.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            break
        if msg[0] == "ready":
            ready.add(msg[1])
            memory[msg[1]] = msg[2]
        else:
            errors.append(msg[2])
    alive = sorted(ready)
    rows = []
    per_step = 2 * opts["batch"]
    for n in counts:
        if n > len(alive):
            rows.append({"n": n, "skipped": f"only {len(alive)} workers started"})
            continue
        threads = max(1, _cores() // n)
        start = time.time() + 0.5
        for rank in alive[:n]:
            commands[rank].put((start, seconds, threads))
        done = []
        while len(done) < n:
            try:
                msg = results.get(timeout=seconds + 60)
            except queue.Empty:
                break
            if msg[0] == "done":
                done.append(msg)
            else:
                errors.append(msg[2])
                break
        rates = [steps * per_step / elapsed for _, _, steps, elapsed in done]
        rows.append(
            {
                "n": n,
                "threads_each": threads,
                "processes_finished": len(done),
                "aggregate_images_per_s": round(sum(rates), 1) if len(done) == n else None,
                "per_process_images_per_s": [round(r, 1) for r in rates],
                "steps": [d[2] for d in done],
            }
        )
    for q in commands:
        q.put(None)
    for p in workers:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
    base = next(
        (
            r["aggregate_images_per_s"]
            for r in rows
            if r["n"] == 1 and r.get("aggregate_images_per_s")
        ),
        None,
    )
    for r in rows:
        if base and r.get("aggregate_images_per_s"):
            r["speedup_vs_1"] = round(r["aggregate_images_per_s"] / base, 2)
    return {
        "rows": rows,
        "suggested_jobs_per_gpu": suggest(rows),
        "cuda_peak_mib_per_process": max((m for m in memory.values() if m), default=None),
        "errors": errors,
    }


def _machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": _cores(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    import torch

    info["torch"] = torch.__version__
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--model", choices=["deepmerge", "resnet18"], default="deepmerge")
    ap.add_argument("--counts", default="1,2,4,8,12", help="processes at once, comma list")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed window per count")
    ap.add_argument("--batch", type=int, default=128, help="images per domain per step")
    ap.add_argument("--images", type=int, default=1024, help="synthetic images per domain")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per worker")
    ap.add_argument("--out", default=None, help="JSON output")
    args = ap.parse_args(argv)
    try:
        counts = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    except ValueError:
        print(
            f"packing.py: error: --counts {args.counts!r}: give whole numbers, e.g. 1,2,4",
            file=sys.stderr,
        )
        return 2
    if not counts or counts[0] < 1:
        print("packing.py: error: --counts needs whole numbers >= 1", file=sys.stderr)
        return 2
    opts = {
        "device": args.device,
        "model": args.model,
        "batch": args.batch,
        "images": args.images,
        "warmup": args.warmup,
    }
    started = time.time()
    report = {
        "benchmark": "packing",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": _machine(args.device),
        "settings": {**opts, "counts": counts, "seconds": args.seconds},
        **measure(opts, counts, args.seconds),
    }
    report["wall_time_s"] = round(time.time() - started, 1)
    for r in report["rows"]:
        agg = r.get("aggregate_images_per_s")
        print(
            f"N={r['n']:>3}  threads={r.get('threads_each', '-'):>2}  "
            f"aggregate={agg if agg is not None else r.get('skipped', 'failed')} img/s  "
            f"speedup={r.get('speedup_vs_1', '-')}"
        )
    print(f"suggested jobs_per_gpu: {report['suggested_jobs_per_gpu']}")
    for err in report["errors"]:
        print(f"worker error: {err}", file=sys.stderr)
    if args.out:
        from galda.results import atomic_write_bytes

        atomic_write_bytes(Path(args.out), (json.dumps(report, indent=1) + "\n").encode())
    return 0 if report["suggested_jobs_per_gpu"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
