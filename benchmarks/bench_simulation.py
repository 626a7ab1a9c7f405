"""The simulator's throughput: images written (source + target) per second per worker."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "simulation"


def bench_simulation(preset: str, workers: int, repeats: int) -> dict[str, Any]:
    """``galda.simulate.simulate_domains`` timed ``repeats`` times; skipped if not importable."""
    try:
        from galda.simulate import simulate_domains
    except Exception as err:  # noqa: BLE001 - the simulator may be absent or broken
        reason = f"galda.simulate not importable: {type(err).__name__}: {err}"
        return {"status": "skipped", "reason": reason}
    from galda.data.h5format import read_domain

    runs = []
    try:
        for r in range(repeats):
            with tempfile.TemporaryDirectory(prefix="galda-bench-sim-") as tmp:
                out = Path(tmp) / "sim"
                start = time.perf_counter()
                simulate_domains(
                    preset=preset, out=out, seed=1 + r, workers=workers, progress=False
                )
                elapsed = time.perf_counter() - start
                n = sum(
                    len(read_domain(p, load_images=False).galaxy_id)
                    for p in sorted(out.glob("*.h5"))
                )
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    repeats = 1 if args.quick else min(2, args.repeats)
    sim = bench_simulation(args.sim_preset, args.sim_workers, repeats)
    if sim["status"] == "ok":
        args.console.print(
            f"simulation ({sim['preset']}, {sim['workers']} worker): "
            f"{sim['images_per_s_per_core']:.1f} images/s per core"
        )
    else:
        args.console.print(f"simulation: {sim['status']} ({sim.get('reason')})")
    return {"simulation": sim}


def skipped(args: argparse.Namespace) -> dict[str, Any]:
    """What the report holds when this module is not run (the JSON keeps its key)."""
    return {"simulation": {"status": "skipped", "reason": "not selected (--no-sim or --skip)"}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sim-preset", default="tiny", help="simulator preset timed (default: tiny)")
    p.add_argument("--sim-workers", type=int, default=1)
    p.add_argument("--no-sim", action="store_true", help="skip the simulator row")
