"""Peak memory of the whole benchmark process (run last)."""

from __future__ import annotations

import argparse
from typing import Any

from bench_common import peak_rss_mib_process

NAME = "memory"


def run(args: argparse.Namespace) -> dict[str, Any]:
    memory: dict[str, Any] = {"peak_rss_mib_process": round(peak_rss_mib_process(), 1)}
    rows = args.report.get("training") or []
    if args.device.type == "cuda":
        memory["cuda_max_allocated_mib_last_row"] = (
            rows[-1]["package"]["cuda_peak_mib"] if rows else None
        )
    args.console.print(f"peak RSS (process): {memory['peak_rss_mib_process']:.0f} MiB")
    return {"memory": memory}
