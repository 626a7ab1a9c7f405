#!/usr/bin/env python
"""Prediction benchmark: ``python -m galda.predict``'s path against a bare ``model(x)`` loop.

Two measurements, on synthetic raw images (3×75×75 float32) written to a memory-mappable ``.npy``
in a temporary folder, with a checkpoint made on the fly in the documented layout (random weights:
speed does not depend on them):

* **throughput** (images/s) per model: ``galda.predict.predict`` — open the ``.npy`` memory-mapped,
  read chunk by chunk (read-ahead thread), NaN check, normalisation and temperature inside the
  model, metadata, the FITS catalogue written at the end — against a bare loop calling the same
  model, ``galda.load_model(ckpt)(x)``, on the same batches already in memory (on the device).
  Repeats are interleaved; medians; ``ratio`` = predict / bare (target ≥ 0.9).
* **peak memory** of a whole run over a large input (200,000 images; ``--quick``: 5,000), in a
  fresh process: ``VmHWM`` (peak resident set, file-backed pages included) minus the resident set
  after a 16-image predict run (model, libraries and allocator warm) — the memory that grows with
  the input.

``run(args) -> dict`` is the entry point for ``benchmarks/run.py``; standalone:
``python benchmarks/bench_predict.py [--quick] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHAPE = (3, 75, 75)
NETS = {
    "deepmerge": {"_target_": "galda.models.DeepMerge", "in_channels": 3, "image_size": 75},
    "tiny": {"_target_": "galda.models.TinyNet", "in_channels": 3},
}
DEFAULTS = {
    "quick": False,
    "device": "cpu",
    "threads": None,
    "batch_size": 256,
    "repeats": None,
    "predict_models": "deepmerge,tiny",
    "throughput_images": None,
    "memory_images": None,
    "memory_model": "tiny",
}


def _opt(args: Any, name: str) -> Any:
    value = getattr(args, name, None) if not isinstance(args, dict) else args.get(name)
    return DEFAULTS[name] if value is None else value


def make_checkpoint(path: Path, model: str, seed: int = 0) -> Path:
    """A checkpoint in galda's self-contained layout (net config, shape, norm buffers)."""
    import torch
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    net = instantiate(NETS[model]).eval()
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state["normaliser.mean"] = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.1, 1.2]])
    state["normaliser.std"] = torch.tensor([[0.5, 0.6, 0.7], [1.5, 1.6, 1.7]])
    state["normaliser._extra_state"] = {"image_shape": list(SHAPE), "bands": ["g", "r", "i"]}
    torch.save(
        {"state_dict": state, "temperature": 1.3, "hyper_parameters": {"net": NETS[model]}}, path
    )
    return path


def make_npy(path: Path, n: int, chunk: int = 4096, seed: int = 0) -> Path:
    """``n`` raw images, written chunk by chunk (a 1,000-image random block, shifted per chunk)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    block = (1.0 + 1.5 * rng.standard_normal((1000, *SHAPE))).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *SHAPE))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        idx = np.arange(start, stop) % len(block)
        out[start:stop] = block[idx] + np.float32(0.01 * (start // chunk))
    out.flush()
    del out
    return path


def _machine() -> dict[str, Any]:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def throughput(
    model: str, folder: Path, n_images: int, batch_size: int, repeats: int, device: str
) -> dict[str, Any]:
    """Median images/s of galda.predict.predict and of the bare network on the same batches."""
    import numpy as np
    import torch

    from galda.inference import load_model
    from galda.predict import predict

    ckpt = make_checkpoint(folder / f"{model}.ckpt", model)
    npy = folder / f"throughput_{n_images}.npy"
    if not npy.exists():
        make_npy(npy, n_images)
    dev = torch.device(device)
    predictor = load_model(ckpt).to(dev)
    data = np.load(npy)  # the bare loop gets its raw batches in memory, on the device
    batches = [
        torch.from_numpy(data[s : s + batch_size]).to(dev) for s in range(0, n_images, batch_size)
    ]
    del data

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def bare() -> float:
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                predictor(x)
        sync()
        return n_images / (time.perf_counter() - t0)

    def package() -> float:
        sync()
        t0 = time.perf_counter()
        predict(
            ckpt,
            npy,
            out=folder / "throughput.fits",
            batch_size=batch_size,
            device=device,
            force=True,
            progress=False,
        )
        sync()
        return n_images / (time.perf_counter() - t0)

    bare()  # warm-up: allocator, kernels, page cache
    package()
    runs: dict[str, list[float]] = {"bare": [], "predict": []}
    for _ in range(repeats):
        runs["bare"].append(bare())
        runs["predict"].append(package())
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "model": model,
        "device": device,
        "images": n_images,
        "batch_size": batch_size,
        "repeats": repeats,
        "bare_images_per_s": round(med["bare"], 1),
        "predict_images_per_s": round(med["predict"], 1),
        "ratio": round(med["predict"] / med["bare"], 3),
        "all_bare": [round(v, 1) for v in runs["bare"]],
        "all_predict": [round(v, 1) for v in runs["predict"]],
    }


_MEMORY_CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from galda.predict import predict

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0  # MiB
ckpt, npy, out, batch, device = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
small = Path(out).with_name("warm.npy")
np.save(small, np.load(npy, mmap_mode="r")[:16])
predict(ckpt, small, out=Path(out).with_name("warm.fits"), batch_size=batch, device=device,
        force=True, progress=False)
base = status("VmRSS")
t0 = time.perf_counter()
table = predict(ckpt, npy, out=out, batch_size=batch, device=device, force=True, progress=False)
wall = time.perf_counter() - t0
print(json.dumps({"rows": len(table), "baseline_rss_mib": base, "peak_rss_mib": status("VmHWM"),
                  "end_rss_file_mib": status("RssFile"), "end_rss_anon_mib": status("RssAnon"),
                  "wall_s": wall, "images_per_s": len(table) / wall}))
"""


def peak_memory(
    model: str, folder: Path, n_images: int, batch_size: int, device: str
) -> dict[str, Any]:
    """Peak resident memory of one predict run over ``n_images``, in a fresh process."""
    ckpt = make_checkpoint(folder / f"{model}.ckpt", model)
    t0 = time.perf_counter()
    npy = make_npy(folder / f"memory_{n_images}.npy", n_images)
    made = time.perf_counter() - t0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_CHILD,
            str(ckpt),
            str(npy),
            str(folder / "memory.fits"),
            str(batch_size),
            device,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory run failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    npy.unlink()
    catalogue_mib = (folder / "memory.fits").stat().st_size / 2**20
    return {
        "model": model,
        "device": device,
        "images": n_images,
        "batch_size": batch_size,
        "input_gib": round(n_images * 4 * SHAPE[0] * SHAPE[1] * SHAPE[2] / 2**30, 2),
        "input_written_s": round(made, 1),
        "baseline_rss_mib": round(child["baseline_rss_mib"], 1),
        "peak_rss_mib": round(child["peak_rss_mib"], 1),
        "peak_beyond_model_mib": round(child["peak_rss_mib"] - child["baseline_rss_mib"], 1),
        "end_rss_file_mib": round(child["end_rss_file_mib"], 1),
        "catalogue_mib": round(catalogue_mib, 1),
        "wall_s": round(child["wall_s"], 1),
        "images_per_s": round(child["images_per_s"], 1),
    }


def run(args: Any) -> dict[str, Any]:
    """Run both measurements; ``args`` is an argparse Namespace (or dict) of the options above."""
    import torch

    quick = bool(_opt(args, "quick"))
    device = str(_opt(args, "device"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if _opt(args, "threads"):
        torch.set_num_threads(int(_opt(args, "threads")))
    batch = int(_opt(args, "batch_size"))
    repeats = int(_opt(args, "repeats") or (1 if quick else 3))
    n_tp = int(_opt(args, "throughput_images") or (4 * batch if quick else 16 * batch))
    if device == "cuda":
        n_tp *= 16
    n_mem = int(_opt(args, "memory_images") or (5_000 if quick else 200_000))
    models = [m for m in str(_opt(args, "predict_models")).split(",") if m]
    report: dict[str, Any] = {
        "benchmark": "predict",
        "machine": _machine(),
        "quick": quick,
        "throughput": [],
        "memory": None,
    }
    with tempfile.TemporaryDirectory(prefix="galda-bench-predict-") as tmp:
        folder = Path(tmp)
        for model in models:
            report["throughput"].append(throughput(model, folder, n_tp, batch, repeats, device))
        report["memory"] = peak_memory(
            str(_opt(args, "memory_model")), folder, n_mem, batch, device
        )
    worst = min(r["ratio"] for r in report["throughput"])
    report["acceptance"] = {
        "predict_vs_bare_min_ratio": worst,
        "ratio_ok": worst >= 0.9,
        "peak_beyond_model_mib": report["memory"]["peak_beyond_model_mib"],
        "memory_ok": report["memory"]["peak_beyond_model_mib"] <= 1024,
    }
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="5,000-image memory run, 1 repeat")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (3; quick 1)")
    p.add_argument("--predict-models", default="deepmerge,tiny", help="throughput rows")
    p.add_argument(
        "--throughput-images",
        type=int,
        default=None,
        help="images per throughput pass (16 batches; quick 4; x16 on a GPU)",
    )
    p.add_argument(
        "--memory-images",
        type=int,
        default=None,
        help="images of the memory run (200,000; quick 5,000)",
    )
    p.add_argument("--memory-model", default="tiny", choices=sorted(NETS))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
