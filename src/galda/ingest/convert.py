"""Validate a domain and write it, in chunks, through :class:`galda.data.h5format.DomainWriter`.

Order of work for every import: open and check the inputs (rank, size, dtype, labels, ids,
shapes across domains), scan the pixels for NaN / inf in chunks (refuse, or mark the images to
drop), and only then write. The writer works under a temporary name and renames on success, so
an error or a kill during the write leaves the old output (or none) at the final path.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from galda.data.h5format import DataFormatError, DomainWriter, read_domain
from galda.errors import os_error_hint
from galda.ingest.errors import IngestError
from galda.ingest.sources import ImageSource, StampSource, _fmt_shape, check_image_shape

PRODUCER = "galda.ingest"
CHUNK_BYTES = 64 << 20  # images read per chunk: about 64 MiB of float32
TEST_SLEEP_ENV = "GALDA_INGEST_TEST_SLEEP"  # test hook: seconds to sleep after each written chunk

Report = Callable[[str], None]


@dataclass
class DomainInput:
    """One domain's inputs, opened and checked, not yet scanned for non-finite pixels."""

    domain: str
    images: ImageSource
    labels: np.ndarray | None = None  # uint8 0/1, validated
    galaxy_id: np.ndarray | None = None  # int64, validated; None = row index
    attrs: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)  # label / id tables beside the images


def input_paths(inp: DomainInput) -> list[Path]:
    """Every file the domain is read from (images, stamps, label and id files)."""
    src = inp.images
    return [src.path, *getattr(src, "paths", []), *inp.inputs]


@dataclass
class Plan:
    """A scanned domain: which rows are kept."""

    input: DomainInput
    keep: np.ndarray | None  # bool per row, None = all
    n_dropped: int = 0

    @property
    def n_out(self) -> int:
        return len(self.input.images) - self.n_dropped


def check_domain_name(domain: str) -> str:
    if domain not in ("source", "target"):
        raise IngestError(None, f"domain must be 'source' or 'target', not {domain!r}")
    return domain


def default_chunk(image_shape: Sequence[int]) -> int:
    return max(1, CHUNK_BYTES // (4 * max(1, math.prod(image_shape))))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None: on only when stderr is a terminal
    return tqdm(total=total, desc=desc, unit="img", disable=None if enabled else True, leave=False)


def check_output(out: str | os.PathLike, force: bool) -> Path:
    out = Path(out)
    if out.is_dir():
        raise IngestError(out, "output path is a directory; give a file name such as source.h5")
    if out.exists() and not force:
        raise IngestError(out, "output already exists; pass --force (force=True) to replace it")
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(out: Path, inputs: Sequence[str | os.PathLike | None]) -> None:
    """Refuse an output that is (a link to) one of the inputs, even with ``--force``."""
    for p in inputs:
        if p is not None and _same_file(Path(p), out):
            raise IngestError(out, "output would replace one of the inputs; choose another path")


def write_error(out: Path, err: OSError) -> IngestError:
    """A failed write (permission, disk full, ...) as one line naming the output."""
    return IngestError(out, f"cannot write: {os_error_hint(err)}")


def check_writable(out: Path) -> None:
    """Refuse, before any work, an output whose nearest existing folder cannot be written."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise IngestError(out, f"cannot write: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        import errno

        raise write_error(out, PermissionError(errno.EACCES, "Permission denied", str(folder)))


def check_same_shape(first: DomainInput, other: DomainInput) -> None:
    """Both domains must share C, H, W."""
    (c1, h1, w1), (c2, h2, w2) = first.images.image_shape, other.images.image_shape
    name1 = first.images.path.name
    if c1 != c2:
        raise IngestError(
            other.images.path,
            f"channel count differs between domains: {c2} channels here, "
            f"{c1} in {name1} ({first.domain})",
        )
    if (h1, w1) != (h2, w2):
        raise IngestError(
            other.images.path,
            f"image size differs between domains: {h2}x{w2} here, "
            f"{h1}x{w1} in {name1} ({first.domain})",
        )


def check_matches_file(inp: DomainInput, match: str | os.PathLike) -> None:
    """The new domain must share C, H, W with an existing galda domain file."""
    try:
        other = read_domain(match, load_images=False)
    except DataFormatError as err:
        raise IngestError(None, f"--match: {err}") from err
    c, h, w = other.images.shape[1:]
    mine = inp.images.image_shape
    if mine[0] != c:
        raise IngestError(
            inp.images.path,
            f"channel count differs between domains: {mine[0]} channels here, "
            f"{c} in {Path(match).name}",
        )
    if tuple(mine[1:]) != (h, w):
        raise IngestError(
            inp.images.path,
            f"image size differs between domains: {mine[1]}x{mine[2]} here, "
            f"{h}x{w} in {Path(match).name}",
        )


def _row_path(src: ImageSource, row: int) -> Path:
    if isinstance(src, StampSource):
        return src.paths[row]
    return src.path


def scan(
    inp: DomainInput,
    drop_nonfinite: bool = False,
    chunk: int | None = None,
    progress: bool = False,
    report: Report | None = None,
) -> Plan:
    """Read every pixel once, in chunks; refuse or drop images with NaN / inf."""
    src = inp.images
    n = len(src)
    if not src.may_be_nonfinite:
        return Plan(inp, None, 0)
    chunk = chunk or default_chunk(src.image_shape)
    bad = np.zeros(n, dtype=bool)
    with _progress(n, f"checking {src.path.name}", progress) as bar:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            x = src.read(start, stop)
            bad[start:stop] = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            bar.update(stop - start)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return Plan(inp, None, 0)
    first = int(np.flatnonzero(bad)[0])
    if not drop_nonfinite:
        raise IngestError(
            _row_path(src, first),
            f"non-finite pixels (NaN or inf) in {n_bad} of {n} images (first at row {first}); "
            "fix the data or pass --drop-nonfinite to drop those images",
        )
    if n_bad == n:
        raise IngestError(
            src.path, f"empty domain: all {n} images have non-finite pixels (NaN or inf)"
        )
    if report:
        report(f"{src.path}: dropped {n_bad} of {n} images with non-finite pixels (NaN or inf)")
    return Plan(inp, ~bad, n_bad)


def domain_attrs(inp: DomainInput, n_dropped: int) -> dict[str, Any]:
    c = inp.images.image_shape[0]
    attrs: dict[str, Any] = {
        "domain": inp.domain,
        "producer": PRODUCER,
        "band_names": [f"band{i}" for i in range(c)],
        "pixel_scale_arcsec": float("nan"),
        "source_files": list(inp.files or inp.images.files),
        "galaxy_id_origin": "input" if inp.galaxy_id is not None else "row index",
        "n_dropped_nonfinite": int(n_dropped),
        "n_input_images": len(inp.images),
    }
    for key, value in inp.attrs.items():
        if value is not None:
            attrs[key] = value
    bands = attrs["band_names"]
    if isinstance(bands, str):
        bands = [b.strip() for b in bands.split(",")]
        attrs["band_names"] = bands
    if len(bands) != c:
        raise IngestError(
            None, f"{len(bands)} band names {list(bands)} given for {c}-channel images"
        )
    return attrs


def write_plan(
    plan: Plan,
    out: str | os.PathLike,
    overwrite: bool = False,
    chunk: int | None = None,
    progress: bool = False,
) -> Path:
    """Write a scanned domain to ``out`` (atomically, see DomainWriter)."""
    inp = plan.input
    src = inp.images
    n = len(src)
    out = Path(out)
    chunk = chunk or default_chunk(src.image_shape)
    gid = inp.galaxy_id if inp.galaxy_id is not None else np.arange(n, dtype=np.int64)
    labels = inp.labels
    attrs = domain_attrs(inp, plan.n_dropped)
    sleep = float(os.environ.get(TEST_SLEEP_ENV, "0") or 0)
    try:
        writer = DomainWriter(
            out,
            n=plan.n_out,
            image_shape=src.image_shape,
            labelled=labels is not None,
            attrs=attrs,
            overwrite=overwrite,
        )
    except FileExistsError as err:
        raise IngestError(out, "output already exists; pass --force to replace it") from err
    except DataFormatError as err:
        raise IngestError(src.path, f"empty domain ({err})") from err
    try:
        _write_rows(plan, writer, out, chunk, gid, progress, sleep)
    except OSError as err:  # reads raise IngestError, so an OSError here is a failed write
        raise write_error(out, err) from err
    return out


def _write_rows(
    plan: Plan,
    writer: DomainWriter,
    out: Path,
    chunk: int,
    gid: np.ndarray,
    progress: bool,
    sleep: float,
) -> None:
    inp = plan.input
    src = inp.images
    n = len(src)
    labels = inp.labels
    with writer as w, _progress(plan.n_out, f"{inp.domain} -> {out.name}", progress) as bar:
        pos = 0
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            x = src.read(start, stop)
            rows = np.arange(start, stop)
            if plan.keep is not None:
                sel = plan.keep[start:stop]
                x, rows = x[sel], rows[sel]
            if src.may_be_nonfinite and not np.isfinite(x).all():
                raise IngestError(
                    src.path,
                    "non-finite pixels appeared during conversion (did the file change "
                    "while it was read?)",
                )
            if len(x):
                w.write(pos, x, None if labels is None else labels[rows], gid[rows])
            pos += len(x)
            bar.update(len(x))
            if sleep:
                time.sleep(sleep)
        if pos != plan.n_out:  # pragma: no cover - guards the bookkeeping above
            raise RuntimeError(f"wrote {pos} rows, expected {plan.n_out}")


def summary(plan: Plan, out: Path) -> str:
    inp = plan.input
    shape = _fmt_shape(inp.images.image_shape)
    if inp.labels is None:
        lab = "unlabelled"
    else:
        y = inp.labels if plan.keep is None else inp.labels[plan.keep]
        lab = f"{int(y.sum())} mergers / {int((y == 0).sum())} non-mergers"
    return f"wrote {out}: {inp.domain}, {plan.n_out} images {shape}, {lab}"


def ingest_domain(
    inp: DomainInput,
    out: str | os.PathLike,
    force: bool = False,
    drop_nonfinite: bool = False,
    size: int | None = None,
    match: str | os.PathLike | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    report: Report | None = None,
) -> Path:
    """Check, scan and write one domain; return the output path."""
    check_not_input(Path(out), [*input_paths(inp), match])
    out = check_output(out, force)
    check_writable(out)
    check_image_shape(inp.images.path, inp.images.shape, size=size)
    if match is not None:
        check_matches_file(inp, match)
    plan = scan(inp, drop_nonfinite, chunk_size, progress, report)
    write_plan(plan, out, overwrite=force, chunk=chunk_size, progress=progress)
    if report:
        report(summary(plan, out))
    return out


def ingest_pair(
    source: DomainInput,
    target: DomainInput,
    outdir: str | os.PathLike,
    force: bool = False,
    drop_nonfinite: bool = False,
    size: int | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    report: Report | None = None,
) -> dict[str, Path]:
    """Write ``outdir/source.h5`` and ``outdir/target.h5`` after checking both domains.

    Both files are written into a hidden staging folder inside ``outdir`` and moved into place
    only when both are complete, so a failure leaves the old pair (or none) untouched.
    """
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise IngestError(outdir, "output folder is a file")
    for d in ("source", "target"):
        check_not_input(outdir / f"{d}.h5", [*input_paths(source), *input_paths(target)])
    outs = {d: check_output(outdir / f"{d}.h5", force) for d in ("source", "target")}
    check_writable(outs["source"])
    for inp in (source, target):
        check_image_shape(inp.images.path, inp.images.shape, size=size)
    check_same_shape(source, target)
    plans = {
        "source": scan(source, drop_nonfinite, chunk_size, progress, report),
        "target": scan(target, drop_nonfinite, chunk_size, progress, report),
    }
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".galda-ingest-", dir=outdir))
    except OSError as err:
        raise write_error(outdir, err) from err
    try:
        for d, plan in plans.items():
            try:
                write_plan(plan, staging / f"{d}.h5", chunk=chunk_size, progress=progress)
            except IngestError as err:
                if err.path == str(staging / f"{d}.h5"):  # name the final path, not the staging one
                    raise IngestError(outs[d], err.problem) from err
                raise
        for d in plans:
            try:
                os.replace(staging / f"{d}.h5", outs[d])
            except OSError as err:
                raise write_error(outs[d], err) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if report:
        for d, plan in plans.items():
            report(summary(plan, outs[d]))
    return outs
