"""Smoke test of `make bench` (benchmarks/run.py --quick): it runs and records sane figures.

No timing assertions: only that every requested row exists and its numbers are positive.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run.py"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.timeout(300)
def test_quick_benchmark_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--models", "deepmerge",
         "--methods", "baseline,dann", "--device", "cpu", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["machine"]["cores"] >= 1
    assert report["machine"]["cpu_model"]
    assert report["versions"]["torch"]
    assert report["date"]
    rows = {(r["model"], r["method"]): r for r in report["training"]}
    assert set(rows) == {("deepmerge", "baseline"), ("deepmerge", "dann")}
    for row in rows.values():
        for impl in ("package", "reference"):
            assert _positive(row[impl]["images_per_s"]), (row, impl)
            assert _positive(row[impl]["steps_per_s"])
            assert row[impl]["steps_timed"] >= 1
            assert _positive(row[impl]["peak_rss_mib"])
        assert _positive(row["ratio"])
        assert _positive(row["loader_over_training"])
    # the baseline forwards source images only; DANN source + target
    batch = report["settings"]["batch_per_domain"]
    assert rows[("deepmerge", "baseline")]["images_per_step"] == batch
    assert rows[("deepmerge", "dann")]["images_per_step"] == 2 * batch

    loader = report["dataloader"]
    assert _positive(loader["batches_per_s"]) and _positive(loader["images_per_s"])
    assert loader["images_per_batch"] == 2 * batch
    assert report["simulation"]["status"] in ("ok", "skipped", "failed")
    if report["simulation"]["status"] == "ok":
        assert _positive(report["simulation"]["images_per_s_per_core"])
    assert _positive(report["memory"]["peak_rss_mib_process"])
    assert "package_ge_0.9x_reference" in report["acceptance"]
    assert not list(tmp_path.glob(".bench.json.*.tmp")), "atomic write left a temporary file"
