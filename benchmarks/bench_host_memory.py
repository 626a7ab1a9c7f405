"""Host memory: DeepMerge steps with glibc's default allocator against ``reuse_host_memory``.

A plain PyTorch loop (no Lightning) times two steps, each in fresh subprocesses so that the
process-wide allocator setting (:mod:`galda.host_memory`) is the only difference:

* baseline: ``--batch-size`` (128) source images, cross-entropy, backward, Adam;
* MMD: 128 + 128 images forwarded as one batch, cross-entropy on the source half + galda's
  ``MMDLoss`` between the halves' features, backward, Adam.

Subprocesses alternate (system, reuse, system, reuse, ...) so both modes share the machine's load;
each reports the median of its timed steps and its peak RSS. The figure of merit is the MMD step's
cost per image against the baseline's (issue 16: within 25 %), under each allocator. CPU only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from bench_common import REPO

NAME = "host_memory"

CHILD = r"""
import json, resource, sys, time, torch
from galda.host_memory import reuse_freed_memory
from galda.losses import MMDLoss
from galda.models import DeepMerge
mode, threads, steps, warmup, batch = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(threads)
threshold = reuse_freed_memory() if mode == "reuse" else None
torch.manual_seed(0)
net = DeepMerge()
opt = torch.optim.Adam(net.parameters(), 1e-3)
mmd = MMDLoss()
gen = torch.Generator().manual_seed(1)
def step(method):
    n = batch if method == "baseline" else 2 * batch
    x = torch.randn(n, 3, 75, 75, generator=gen)
    y = torch.randint(0, 2, (batch,), generator=gen)
    t = time.perf_counter()
    features, logits = net(x)
    loss = torch.nn.functional.cross_entropy(logits[:batch], y)
    if method == "mmd":
        loss = loss + mmd(features[:batch], features[batch:])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t
out = {"mode": mode, "mmap_threshold": threshold}
for method in ("baseline", "mmd", "baseline", "mmd"):  # twice, interleaved: drift hits both
    for _ in range(warmup):
        step(method)
    out.setdefault(method, []).extend(step(method) for _ in range(steps))
try:  # VmHWM starts afresh at exec; ru_maxrss can carry the parent's peak across fork + exec
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
    out["peak_rss_mib"] = int(hwm.split()[1]) / 1024
except (OSError, IndexError):
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host-memory-pairs",
        type=int,
        default=None,
        help="host_memory: subprocess pairs (system, reuse) to alternate (default 3; quick 1)",
    )


def skipped(args: argparse.Namespace) -> dict[str, Any]:
    return {NAME: {"status": "skipped", "reason": "not selected (--only / --skip)"}}


def _child(mode: str, threads: int, steps: int, warmup: int, batch: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, *map(str, (threads, steps, warmup, batch))],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "", "OMP_WAIT_POLICY": "PASSIVE"},
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"host_memory child ({mode}) failed: {proc.stderr.strip()[-500:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.device.type != "cpu":
        return {NAME: {"status": "skipped", "reason": "CPU only (host allocator)"}}
    pairs = args.host_memory_pairs or (1 if args.quick else 3)
    steps, warmup = (2, 1) if args.quick else (6, 2)
    threads = args.threads or 1
    batch = args.batch_size
    children: dict[str, list[dict[str, Any]]] = {"system": [], "reuse": []}
    for _ in range(pairs):
        for mode in children:
            children[mode].append(_child(mode, threads, steps, warmup, batch))
    rows: dict[str, Any] = {}
    for mode, runs in children.items():
        ms = {
            m: 1000 * statistics.median(statistics.median(r[m]) for r in runs)
            for m in ("baseline", "mmd")
        }
        rows[mode] = {
            "baseline_step_ms": round(ms["baseline"], 1),
            "mmd_step_ms": round(ms["mmd"], 1),
            "baseline_ms_per_image": round(ms["baseline"] / batch, 3),
            "mmd_ms_per_image": round(ms["mmd"] / (2 * batch), 3),
            "mmd_per_image_vs_baseline": round(ms["mmd"] / ms["baseline"] / 2, 3),
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs), 1),
            "mmap_threshold": runs[0]["mmap_threshold"],
        }
    ratio = rows["reuse"]["mmd_per_image_vs_baseline"]
    for mode, row in rows.items():
        args.console.print(
            f"host memory ({mode}): baseline {row['baseline_step_ms']:.0f} ms/step, MMD "
            f"{row['mmd_step_ms']:.0f} ms/step, MMD per image {row['mmd_per_image_vs_baseline']:.2f}"
            f"x the baseline's, peak RSS {row['peak_rss_mib']:.0f} MiB"
        )
    return {
        NAME: {
            "threads": threads,
            "batch_per_domain": batch,
            "pairs": pairs,
            "timed_steps_per_method": 2 * steps,
            "rows": rows,
        },
        "acceptance": {"host_memory_mmd_per_image_within_25pct": ratio <= 1.25},
    }
