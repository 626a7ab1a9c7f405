"""Classify images in chunks and build the catalogue.

Memory: one chunk of images is held at a time (two while the next is read ahead in a thread),
plus per-row outputs (a few bytes per image: P(merger) per member as float32, ids, RA/Dec), so a
million 3×75×75 images need about 2 × chunk × 67.5 kB + ~40 MB besides the model.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from galda import __version__
from galda.errors import GaldaError, cannot_write
from galda.inference import MergerPredictor
from galda.models.folding import fold_batchnorm
from galda.predict.inputs import PredictInput

CATALOGUE_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits"}
FIGURE_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
DEFAULT_BATCH = 256


def _fmt(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def check_models(models: Sequence[MergerPredictor]) -> None:
    """Ensemble members must take the same input."""
    first = models[0]
    for m in models[1:]:
        if m.n_channels != first.n_channels or (
            m.image_shape and first.image_shape and m.image_shape != first.image_shape
        ):
            raise GaldaError(
                f"{m.checkpoint}: takes {_fmt(m.image_shape or (m.n_channels,))} "
                f"images but {first.checkpoint} takes "
                f"{_fmt(first.image_shape or (first.n_channels,))}; an ensemble "
                "needs members trained on the same image shape"
            )


def check_compatible(inp: PredictInput, model: MergerPredictor) -> None:
    """Bands and image size of the input against the model's; raises before any work."""
    c, h, w = inp.image_shape
    bands = f" ({', '.join(model.bands)})" if model.bands else ""
    if c != model.n_channels:
        raise GaldaError(
            f"{inp.path}: images have {c} band(s) but the model was trained on "
            f"{model.n_channels}{bands}; give images with the same bands in the same order "
            "(N, C, H, W), channels first"
        )
    if model.image_shape is not None and (h, w) != tuple(model.image_shape[1:]):
        mh, mw = model.image_shape[1:]
        raise GaldaError(
            f"{inp.path}: images are {h}×{w} pixels but the model takes {mh}×{mw}; cut or "
            f"resample the stamps to {mh}×{mw} at the training pixel scale"
        )


@dataclass
class Predictions:
    """Per-row outputs of :func:`run_models`: P(merger) per member (M, N) and metadata."""

    probs: np.ndarray
    files: np.ndarray
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        return self.probs.mean(axis=0)


def _nonfinite_error(inp: PredictInput, start: int, x: np.ndarray) -> GaldaError:
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    row = start + int(np.flatnonzero(bad)[0])
    where = inp.row_path(row)
    at = f"row {row}" if where == inp.path else f"stamp {row}"
    return GaldaError(
        f"{where}: non-finite pixels (NaN or inf) in {at}; replace them (e.g. np.nan_to_num, or "
        "the survey's masked value) or leave those images out, then run again"
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise GaldaError(f"--device {device}: not a device (use auto, cpu, cuda, cuda:1)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GaldaError(f"--device {device}: CUDA is not available here; use --device cpu")
    return dev


@torch.inference_mode()
def run_models(
    models: Sequence[MergerPredictor],
    inp: PredictInput,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Predictions:
    """P(merger) of every image of ``inp`` under every model, reading chunk by chunk.

    The next chunk is read in a background thread while the current one is classified. Stops at
    the first chunk with a NaN or inf pixel (GaldaError naming the file and row).
    """
    from tqdm.auto import tqdm

    device = resolve_device(device) if isinstance(device, str) else device
    # batch norm folded into the convolutions: the same function, about a fifth less work on a CPU
    nets = [fold_batchnorm(m.to(device).eval()) for m in models]
    n = len(inp)
    probs = np.empty((len(nets), n), dtype=np.float32)
    chunks: dict[str, list[np.ndarray]] = {}
    check_finite = inp.source.may_be_nonfinite
    starts = list(range(0, n, batch_size))
    pin = device.type == "cuda"
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        tqdm(
            total=n,
            unit="img",
            desc=f"classifying {inp.path.name}",
            disable=not progress,
            dynamic_ncols=True,
            leave=False,
        ) as bar,
    ):
        pending = pool.submit(inp.source.read, 0, min(n, batch_size))
        for i, start in enumerate(starts):
            stop = min(n, start + batch_size)
            x = pending.result()
            if i + 1 < len(starts):
                nxt = starts[i + 1]
                pending = pool.submit(inp.source.read, nxt, min(n, nxt + batch_size))
            if check_finite and not np.isfinite(x).all():
                raise _nonfinite_error(inp, start, x)
            xt = torch.from_numpy(x)
            xt = (xt.pin_memory() if pin else xt).to(device, non_blocking=pin)
            for j, net in enumerate(nets):
                probs[j, start:stop] = net(xt).float().cpu().numpy()
            for key, values in inp.metadata(start, stop).items():
                chunks.setdefault(key, []).append(
                    _ids_column(values) if key == "object_id" else np.asarray(values)
                )
            bar.update(stop - start)
    meta = {key: _concatenate(parts) for key, parts in chunks.items()}
    return Predictions(probs, inp.file_column(), meta)


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
    """Chunks of one column; ids that are numbers in some chunks and text in others become text."""
    if len({p.dtype.kind for p in parts}) > 1:
        parts = [p.astype(str) for p in parts]
    return np.concatenate(parts) if parts else np.empty(0)


# --------------------------------------------------------------------------------------------
# the catalogue
# --------------------------------------------------------------------------------------------


def _ids_column(values: Any) -> np.ndarray:
    """Object ids as int64 when they are whole numbers, else as text."""
    arr = np.asarray(values)
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        return arr.astype(np.int64)
    return arr.astype(str)


def catalogue_meta(
    models: Sequence[MergerPredictor], inp: PredictInput, threshold: float, model_path: str
) -> dict[str, Any]:
    """Header keywords (≤ 8 characters, FITS-safe) recording how the catalogue was made."""
    first = models[0]
    commits = sorted({str(m.info.get("git_commit")) for m in models if m.info.get("git_commit")})
    temps = [m.temperature for m in models]
    return {
        "ORIGIN": f"galda.predict {__version__}",
        "MODEL": str(model_path),
        "NMEMBERS": len(models),
        "GITCOMM": ",".join(commits) if commits else "unknown",
        "METHOD": ",".join(sorted({str(m.info.get("method", "unknown")) for m in models})),
        "INPUT": str(inp.path),
        "NIMAGES": len(inp),
        "DOMAIN": first.domain,
        "NORMMEAN": json.dumps([round(v, 8) for v in first.normalisation["mean"]]),
        "NORMSTD": json.dumps([round(v, 8) for v in first.normalisation["std"]]),
        "CALIB": bool(all(m.calibrated for m in models)),
        "TEMPER": temps[0] if len(temps) == 1 else ",".join(f"{t:.6g}" for t in temps),
        "THRESH": float(threshold),
        "IDSRC": inp.id_origin or "none",
        "BANDS": ",".join(first.bands) if first.bands else "unknown",
    }


def build_catalogue(
    preds: Predictions,
    models: Sequence[MergerPredictor],
    inp: PredictInput,
    threshold: float = 0.5,
    model_path: str = "",
) -> Any:
    """An astropy Table: file, row, object_id, ra, dec, p_merger, predicted_class (+ ensemble)."""
    import astropy.units as u
    from astropy.table import Table

    n = len(inp)
    table = Table()
    table["file"] = preds.files
    table["file"].description = "input file (the stamp, for a folder)"
    table["row"] = np.arange(n, dtype=np.int64)
    table["row"].description = "row index in the input file (the stamp's index, for a folder)"
    if "object_id" in preds.meta:
        table["object_id"] = preds.meta["object_id"]
        table["object_id"].description = f"object id ({inp.id_origin})"
    if "ra" in preds.meta:
        ra = np.asarray(preds.meta["ra"], np.float64)
        dec = np.asarray(preds.meta["dec"], np.float64)
        if np.isfinite(ra).any():
            table["ra"] = ra * u.deg
            table["ra"].description = "right ascension (ICRS, header RA or WCS centre)"
            table["dec"] = dec * u.deg
            table["dec"].description = "declination"
    p = preds.mean.astype(np.float32)
    table["p_merger"] = p
    table["p_merger"].unit = u.dimensionless_unscaled
    table["p_merger"].description = "P(merger)" + (
        ", mean over ensemble members" if len(models) > 1 else ""
    )
    table["predicted_class"] = (p > threshold).astype(np.uint8)
    table["predicted_class"].description = f"1 = merger (p_merger > {threshold}), 0 = non-merger"
    if len(models) > 1:
        table["p_merger_std"] = preds.probs.std(axis=0, ddof=1).astype(np.float32)
        table["p_merger_std"].unit = u.dimensionless_unscaled
        table["p_merger_std"].description = "standard deviation of P(merger) over members"
        table["n_members"] = np.full(n, len(models), dtype=np.int16)
        table["n_members"].description = "ensemble members (runs of the sweep)"
    table.meta.update(catalogue_meta(models, inp, threshold, model_path))
    return table


def check_output(out: str | os.PathLike, force: bool, what: str = "--out") -> Path:
    out = Path(out)
    if what == "--out" and out.suffix.lower() not in CATALOGUE_FORMATS:
        raise GaldaError(
            f"{out}: unknown catalogue format {out.suffix!r}; end {what} in .csv, .ecsv or .fits"
        )
    if what == "--gallery" and out.suffix.lower() not in FIGURE_FORMATS:
        raise GaldaError(
            f"{out}: unknown figure format {out.suffix!r}; end {what} in "
            f"{', '.join(FIGURE_FORMATS)}"
        )
    if out.exists() and not force:
        raise GaldaError(f"{out}: already exists; choose another {what} or pass --force")
    if out.is_dir():
        raise GaldaError(f"{out}: is a folder; give a file name for {what}")
    return out


def check_not_input(
    out: Path, inputs: Sequence[tuple[str, str | os.PathLike | None]], what: str = "--out"
) -> None:
    """Refuse an output that is (a link to) one of the inputs, even with ``--force``.

    ``inputs``: (description, path) pairs, e.g. ``("the checkpoint", "model.ckpt")``.
    """
    for name, path in inputs:
        if path is None:
            continue
        try:
            same = os.path.samefile(path, out)
        except OSError:  # either one absent (or unreadable): not the same file
            same = False
        if same:
            raise GaldaError(
                f"{out}: output would replace one of the inputs ({name}); choose another {what}"
            )


def check_writable(out: Path) -> None:
    """Refuse, before any image is classified, an output whose folder cannot take a write."""
    from galda.results import probe_writable

    try:
        probe_writable(out.parent)
    except OSError as err:
        raise cannot_write(out, err) from err


def _keep_previous(path: Path) -> Path:
    """A second name for an existing output (a hard link, else a copy), so it can come back."""
    import shutil

    backup = path.with_name(f".{path.name}.galda-previous")
    backup.unlink(missing_ok=True)
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)
    return backup


def write_outputs(writes: Sequence[tuple[Path, Any]]) -> None:
    """Run each ``(path, write)`` in turn (each write is atomic). When one fails, every output
    is as it was before the call: files it created are removed and files it replaced (``--force``)
    come back from a second name kept until the last write succeeded; then raise one line."""
    done: list[tuple[Path, Path | None]] = []  # (output, its previous content's second name)
    try:
        for path, write in writes:
            try:
                previous = _keep_previous(path) if path.exists() else None
            except OSError as err:
                raise cannot_write(path, err) from err
            try:
                write()
            except BaseException as err:
                if previous is not None:  # the atomic write left ``path`` as it was
                    previous.unlink(missing_ok=True)
                if isinstance(err, OSError):
                    raise cannot_write(path, err) from err
                raise
            done.append((path, previous))
    except BaseException:
        for path, previous in done:
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(previous, path)
        raise
    for _, previous in done:
        if previous is not None:
            previous.unlink(missing_ok=True)


def catalogue_bytes(table: Any, out: Path, rows_per_chunk: int = 100_000) -> bytes:
    """The catalogue file's content. CSV and ECSV are formatted by astropy ``rows_per_chunk`` rows
    at a time (its text writer holds several Python strings per cell: ~0.75 GB for a million
    ECSV rows at once); the header comes from the first chunk only."""
    fmt = CATALOGUE_FORMATS[out.suffix.lower()]
    if fmt == "fits":
        buf = io.BytesIO()
        table.write(buf, format="fits")
        return buf.getvalue()
    parts: list[bytes] = []
    for start in range(0, max(len(table), 1), rows_per_chunk):
        text = io.StringIO()
        table[start : start + rows_per_chunk].write(text, format=fmt)
        lines = text.getvalue().splitlines(keepends=True)
        if start > 0:  # drop the repeated header: comment lines, then the column names
            body = 0
            while body < len(lines) and lines[body].startswith("#"):
                body += 1
            lines = lines[body + 1 :]
        parts.append("".join(lines).encode("utf-8"))
    return b"".join(parts)
