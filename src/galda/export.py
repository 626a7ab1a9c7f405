"""Export a trained model for use without galda: ``python -m galda.export MODEL --format onnx``.

The exported graph is :class:`galda.inference.MergerPredictor`: raw images (N, C, H, W) float32 in
the units of the input files → P(merger) (N,), with the domain's normalisation and the calibration
temperature inside the graph (batch size free). The file also records the provenance as metadata
(ONNX ``metadata_props``; a ``galda.json`` extra file in TorchScript): image shape, bands, domain,
normalisation, temperature, checkpoint, method and git commit.

After writing, the file is loaded back (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript)
and its probabilities on a batch of images are compared with the PyTorch model's; a difference
above ``1e-5`` is an error and the file is not kept.

Use::

    import onnxruntime as ort
    session = ort.InferenceSession("merger.onnx")
    p = session.run(None, {"images": images.astype("float32")})[0]     # (N,)

    model = torch.jit.load("merger.pt"); p = model(torch.from_numpy(images))
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from galda.errors import GaldaError
from galda.inference import MergerPredictor, load_model
from galda.results import atomic_write_bytes

PROG = "galda.export"
FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAME = "p_merger"
TOLERANCE = 1e-5


def provenance(model: MergerPredictor) -> dict[str, str]:
    """String metadata stored in the exported file."""
    info = {
        "producer": "galda.export",
        "input": f"{INPUT_NAME}: raw float32 (N, C, H, W)",
        "output": f"{OUTPUT_NAME}: P(merger) (N,)",
        "image_shape": json.dumps(list(model.image_shape) if model.image_shape else None),
        "bands": json.dumps(model.bands),
        "domain": model.domain,
        "normalisation": json.dumps(model.normalisation),
        "temperature": repr(model.temperature),
        "calibrated": str(model.calibrated).lower(),
        "checkpoint": str(model.checkpoint),
    }
    for key in ("method", "model", "seed", "git_commit"):
        if model.info.get(key) is not None:
            info[key] = str(model.info[key])
    return info


def example_batch(model: MergerPredictor, n: int = 8, seed: int = 0) -> torch.Tensor:
    """Images at the scale of the model's domain: mean + std · N(0, 1) per channel."""
    c = model.n_channels
    h, w = model.image_shape[1:] if model.image_shape else (75, 75)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, h, w), generator=g)
    return x * model.std.detach().cpu() + model.mean.detach().cpu()


def onnx_bytes(model: MergerPredictor, x: torch.Tensor, opset: int | None = None) -> bytes:
    """The model as an ONNX file (torch.export-based exporter, dynamic batch axis)."""
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
    assert program is not None  # returned when no file name is given
    proto = program.model_proto
    for key, value in provenance(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"galda.{key}", value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def torchscript_bytes(model: MergerPredictor, x: torch.Tensor) -> bytes:
    """The model traced to TorchScript, with ``galda.json`` (provenance) as an extra file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={"galda.json": json.dumps(provenance(model))})
    return buf.getvalue()


def run_exported(payload: bytes, fmt: str, x: np.ndarray) -> np.ndarray:
    """P(merger) of ``x`` from an exported file's bytes (onnxruntime / torch.jit)."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, min(4, torch.get_num_threads()))
        session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {INPUT_NAME: x.astype(np.float32)})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still asked for
        loaded = torch.jit.load(io.BytesIO(payload), map_location="cpu")
    with torch.inference_mode():
        return loaded(torch.from_numpy(x.astype(np.float32))).numpy()


def export_model(
    model: MergerPredictor,
    out: str | os.PathLike,
    fmt: str = "onnx",
    opset: int | None = None,
    tolerance: float = TOLERANCE,
) -> float:
    """Export ``model`` to ``out`` and check it; returns the largest |Δp| on a test batch.

    The check uses a batch size different from the export example's, so a batch axis baked into
    the graph would fail it. Nothing is written when the check fails.
    """
    if fmt not in FORMATS:
        raise GaldaError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    model = model.to("cpu").eval()
    example = example_batch(model, n=2, seed=0)
    if fmt == "onnx":
        payload = onnx_bytes(model, example, opset)
    else:
        payload = torchscript_bytes(model, example)
    test = example_batch(model, n=5, seed=1)
    with torch.inference_mode():
        expected = model(test).numpy()
    got = run_exported(payload, fmt, test.numpy())
    if got.shape != expected.shape:
        raise GaldaError(
            f"{out}: the exported model returns shape {got.shape}, expected "
            f"{expected.shape}; not written"
        )
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= tolerance:
        raise GaldaError(
            f"{out}: the exported model differs from the PyTorch one by {diff:.2e} "
            f"(> {tolerance:g}) on a test batch; not written"
        )
    atomic_write_bytes(out, payload)
    return diff


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a trained galda model (normalisation and calibration "
        "included) to ONNX or TorchScript.",
        epilog="examples:\n  python -m galda.export outputs/runs/<run> --format onnx --out m.onnx\n"
        "  python -m galda.export model.ckpt --format torchscript --out m.pt\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="checkpoint (.ckpt) or run folder")
    p.add_argument("--format", dest="fmt", choices=FORMATS, required=True)
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (.onnx, .pt)")
    p.add_argument(
        "--domain",
        choices=("source", "target"),
        default="target",
        help="whose normalisation goes into the graph (default: target)",
    )
    p.add_argument(
        "--no-calibration",
        dest="calibrated",
        action="store_false",
        help="leave the stored temperature out (raw softmax)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 written and checked; 2 bad input or settings; 1 unexpected error."""
    args = build_parser().parse_args(argv)
    try:
        out = Path(args.out)
        if out.exists() and not args.force:
            raise GaldaError(f"{out}: already exists; choose another --out or pass --force")
        loaded = load_model(args.model, domain=args.domain, calibrated=args.calibrated)
        if isinstance(loaded, list):
            raise GaldaError(
                f"{args.model}: a sweep folder holds {len(loaded)} runs; export one "
                "run folder or checkpoint at a time"
            )
        diff = export_model(loaded, out, args.fmt, args.opset)
    except GaldaError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(
            f"{PROG}: error: {err.name or err}: not installed; pip install onnx onnxscript "
            "onnxruntime (or galda[export])",
            file=sys.stderr,
        )
        return 2
    except Exception:  # noqa: BLE001 - unexpected: traceback, exit 1
        traceback.print_exc()
        return 1
    print(
        f"{PROG}: wrote {out} ({args.fmt}; max |Δp| = {diff:.1e} against PyTorch on a test batch)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
