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
    threads = os.environ.get("OMP_NUM_THREADS", "2")
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": threads}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--models",
            "deepmerge",
            "--methods",
            "baseline,dann",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--skip",
            "peers",
            "--ooc-images",
            "600",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
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
    host = report["host_memory"]
    assert set(host["rows"]) == {"system", "reuse"} and host["batch_per_domain"] == batch
    for row in host["rows"].values():
        assert _positive(row["mmd_per_image_vs_baseline"]) and _positive(row["peak_rss_mib"])
    assert host["rows"]["system"]["mmap_threshold"] is None
    assert "host_memory_mmd_per_image_within_25pct" in report["acceptance"]
    assert "package_ge_0.9x_reference" in report["acceptance"]
    assert report["peers"]["status"] == "skipped"  # not selected: the key stays
    ooc = report["out_of_core"]
    assert ooc["images"] == 600 and _positive(ooc["warm"]["images_per_s"])
    assert "out_of_core_ge_10x_training" in report["acceptance"]
    assert not list(tmp_path.glob(".bench.json.*.tmp")), "atomic write left a temporary file"


# --------------------------------------------------------------------------- module registry


@pytest.fixture()
def bench(monkeypatch):
    """benchmarks/run.py imported in-process (its OMP_WAIT_POLICY default is undone afterwards)."""
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import run

    return run


def test_every_registered_benchmark_has_a_name_and_run(bench):
    names = [m.NAME for m in bench.BENCHMARKS]
    assert len(names) == len(set(names))
    assert {"training", "loader", "out_of_core", "peers", "simulation", "memory"} <= set(names)
    assert "predict" in names  # registered, opt-in
    assert "predict" not in [m.NAME for m in bench.selected(bench.parse_args([]))]
    assert names[-1] == "memory"  # the process peak is read last
    for module in bench.BENCHMARKS:
        assert callable(module.run)


def test_selection_and_unknown_names(bench):
    args = bench.parse_args(["--only", "training,loader", "--skip", "loader"])
    assert [m.NAME for m in bench.selected(args)] == ["training"]
    args = bench.parse_args(["--no-sim"])
    assert "simulation" not in [m.NAME for m in bench.selected(args)]
    with pytest.raises(SystemExit) as err:
        bench.parse_args(["--only", "nonesuch"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "vgg"])


def test_one_more_module_is_one_registry_entry(bench, monkeypatch, tmp_path):
    """A module with NAME and run(args) -> dict, listed in BENCHMARKS, lands in the JSON."""
    import types

    seen = {}

    def run(args):
        seen["device"] = str(args.device)
        seen["tmp_exists"] = args.tmp.is_dir()
        return {"fake_predict": {"images_per_s": 123.0}, "acceptance": {"predict_ok": True}}

    module = types.SimpleNamespace(NAME="fake_predict", run=run)
    registry = [*bench.BENCHMARKS[:-1], module, bench.BENCHMARKS[-1]]  # memory stays last
    monkeypatch.setattr(bench, "BENCHMARKS", registry)
    out = tmp_path / "b.json"
    argv = ["--only", "fake_predict,memory", "--device", "cpu", "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["fake_predict"] == {"images_per_s": 123.0}
    assert report["predict"]["status"] == "skipped"  # the real, opt-in one
    assert report["acceptance"]["predict_ok"] is True
    assert report["simulation"]["status"] == "skipped"  # unselected modules keep their key
    assert _positive(report["memory"]["peak_rss_mib_process"])
    assert seen == {"device": "cpu", "tmp_exists": True}
    assert report["settings"]["benchmarks"] == ["fake_predict", "memory"]


def test_out_of_core_module_alone(bench, tmp_path):
    out = tmp_path / "ooc.json"
    argv = ["--only", "out_of_core", "--quick", "--ooc-images", "500", "--ooc-batches", "6"]
    assert bench.main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    ooc = json.loads(out.read_text())["out_of_core"]
    assert ooc["images"] == 500 and ooc["layout"] == "one uncompressed chunk per image"
    assert ooc["path"].startswith("DomainAdaptationDataModule(out_of_core=True)")
    assert ooc["setup_s"] >= 0 and 0 < ooc["training_images_per_domain"] < 250
    for name in ("cold", "warm", "in_memory"):
        assert _positive(ooc[name]["batches_per_s"]) and _positive(ooc[name]["peak_rss_mib"])
    assert ooc["warm"]["batches"] == 6 and ooc["images_per_batch"] == 32
    assert ooc["in_memory"]["images_held_per_domain"] == 250
    assert "fastest_training_row" not in ooc  # no training rows in this run
    assert not list(tmp_path.rglob("*.h5"))


def test_peer_row_runs_or_says_why_not(bench, tmp_path):
    out = tmp_path / "peers.json"
    argv = ["--only", "peers", "--quick", "--peer-methods", "baseline,mmd", "--peer-images", "48"]
    assert bench.main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    peers = report["peers"]
    if bench.bench_peers.skada_missing():
        assert peers["status"] == "skipped" and "pip install" in peers["reason"]
        return
    assert peers["status"] == "ok" and [r["method"] for r in peers["rows"]] == ["baseline", "mmd"]
    for row in peers["rows"]:
        for name in ("galda", "galda_nchw", "skada"):
            assert _positive(row[name]["seconds_per_epoch"]), (row["method"], name)
        assert _positive(row["galda_over_skada"])
    assert row["skada_method"] == "DAN"
    import torch

    assert row["galda_layout"] == ("nchw" if torch.cuda.is_available() else "channels_last")
    assert _positive(report["acceptance"]["mmd_over_baseline_per_image"])


def test_skada_gets_deepmerge_in_the_authors_block_order_with_the_same_function(bench):
    import torch
    from torch import nn

    from galda.models import DeepMerge

    torch.manual_seed(0)
    ours = DeepMerge()
    theirs = bench.bench_peers.authors_block_order(DeepMerge())
    theirs.load_state_dict(ours.state_dict())  # the same parameter names in both orders
    kinds = [type(m) for m in theirs.features][:4]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert [type(m) for m in ours.features][2:4] == [nn.MaxPool2d, nn.ReLU]
    x = torch.randn(4, 3, 75, 75)
    assert torch.equal(ours(x)[1], theirs(x)[1])
