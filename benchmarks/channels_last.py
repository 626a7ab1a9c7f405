#!/usr/bin/env python
"""Channels-last against contiguous (NCHW) memory format, side by side.

Steps of the plain reference loop (benchmarks/run.py's ReferenceLoop: same network, losses and
optimiser as the package) alternate between a contiguous and a channels-last copy of the data
and model, so machine load cancels step by step. Prints the median step time of each and their
ratio. Usage: .venv/bin/python benchmarks/channels_last.py [--models ...] [--methods ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402
import run as bench  # noqa: E402  (sets OMP_WAIT_POLICY before torch is imported)
import torch  # noqa: E402
from bench_reference import ReferenceLoop  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="deepmerge,resnet18")
    p.add_argument("--methods", default="baseline,dann")
    p.add_argument("--steps", type=int, default=None, help="timed steps (deepmerge 20, resnet18 6)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--omp-wait-policy", default="passive")  # read by run.py at import
    args = p.parse_args()
    common.quiet()

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="galda-bench-cl-") as tmp_s:
        tmp = Path(tmp_s)
        paths = common.make_synthetic_data(tmp / "data", 2048)
        dms = {}
        for cl in (False, True):
            ns = bench.parse_args(
                ["--batch-size", str(args.batch_size), "--channels-last", str(cl).lower()]
            )
            cfg = common.compose_config("deepmerge", "baseline", ns, device, paths, tmp / "run")
            common.apply_torch_flags(cfg)
            dm = common.build_datamodule(cfg)
            dm.setup("fit")
            dms[cl] = (ns, dm)
        print(f"{'model':10s} {'method':9s} {'NCHW ms':>9s} {'NHWC ms':>9s} {'NHWC speed-up':>14s}")
        for model in args.models.split(","):
            steps = args.steps or bench.CPU_STEPS.get(model, 8)
            for method in args.methods.split(","):
                loops = {}
                for cl, (ns, dm) in dms.items():
                    cfg = common.compose_config(model, method, ns, device, paths, tmp / "run")
                    loops[cl] = ReferenceLoop(cfg, dm, steps + 2, device)
                times = {False: [], True: []}
                for i in range(steps + 2):
                    for cl in (False, True) if i % 2 == 0 else (True, False):
                        common.sync(device)
                        t0 = time.perf_counter()
                        loops[cl].step()
                        common.sync(device)
                        if i >= 2:  # two warm-up steps
                            times[cl].append(time.perf_counter() - t0)
                a, b = statistics.median(times[False]), statistics.median(times[True])
                print(f"{model:10s} {method:9s} {1000 * a:9.1f} {1000 * b:9.1f} {a / b:13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
