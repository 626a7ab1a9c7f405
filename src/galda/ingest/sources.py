"""Readers for the accepted input formats, each validating as it opens.

Images are never loaded whole: every reader returns an :class:`ImageSource` whose ``read(start,
stop)`` yields float32 rows ``(k, C, H, W)`` from a memory map (``.npy``, FITS) or an HDF5
dataset, or from one stamp file per image. Labels and galaxy ids are small and are loaded whole.
Every problem raises :class:`IngestError` naming the file.
"""

from __future__ import annotations

import csv
import math
import mmap
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galda.ingest.errors import IngestError

RANK_HINT = "images must be channels-first (N, C, H, W)"


# --------------------------------------------------------------------------------------------
# image sources
# --------------------------------------------------------------------------------------------


class ImageSource:
    """Rows of an image array, read in chunks as float32 ``(k, C, H, W)``."""

    path: Path
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    files: list[str]

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.shape[1:])  # type: ignore[return-value]

    @property
    def may_be_nonfinite(self) -> bool:
        """Whether pixels can be NaN or inf (floats, or integers with a FITS BLANK value)."""
        return True

    def read(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class ArraySource(ImageSource):
    """A sliceable rank-4 array: ``np.memmap``, FITS data or an ``h5py.Dataset``."""

    def __init__(
        self,
        path: str | os.PathLike,
        array: Any,
        scale: float = 1.0,
        zero: float = 0.0,
        blank: int | None = None,
        closer: Callable[[], None] | None = None,
        files: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(array.dtype)
        self.scale, self.zero, self.blank = scale, zero, blank
        self._closer = closer
        self.files = list(files) if files is not None else [self.path.name]
        check_image_dtype(self.path, self.dtype)
        check_image_shape(self.path, self.shape)

    @property
    def may_be_nonfinite(self) -> bool:
        return self.dtype.kind == "f" or self.blank is not None

    def read(self, start: int, stop: int) -> np.ndarray:
        try:
            raw = np.asarray(self.array[start:stop])
        except (OSError, ValueError, TypeError, RuntimeError) as err:
            raise IngestError(
                self.path, f"corrupt or truncated data in rows {start}:{stop} ({err})"
            ) from err
        out = raw.astype(np.float32)
        release_mapped_pages(raw)
        if self.scale != 1.0 or self.zero != 0.0:
            out = (out * np.float32(self.scale) + np.float32(self.zero)).astype(np.float32)
        if self.blank is not None:
            out[raw == self.blank] = np.nan
        return out

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


def _mapping_of(array: np.ndarray) -> Any:
    """The ``mmap.mmap`` behind a memory-mapped array (``np.memmap`` or astropy FITS data)."""
    obj: Any = array
    while obj is not None:
        mm = getattr(obj, "_mmap", None)
        if mm is not None:
            return mm
        if isinstance(obj, mmap.mmap):
            return obj
        obj = getattr(obj, "base", None)
    return None


def release_mapped_pages(rows: np.ndarray) -> None:
    """Drop already-copied rows of a memory map from this process's resident set.

    Pages of a file mapping stay mapped (and counted in the RSS) once touched, so reading a large
    file front to back would grow the resident set to the file's size; ``MADV_DONTNEED`` unmaps
    them (the data stay in the page cache). No-op for arrays that are not memory-mapped.
    """
    mm = _mapping_of(rows)
    if mm is None or not rows.flags.c_contiguous or rows.nbytes == 0:
        return
    try:
        base = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
        start = rows.__array_interface__["data"][0] - base
        aligned = start - start % mmap.PAGESIZE
        length = min(start + rows.nbytes, len(mm)) - aligned
        if aligned >= 0 and length > 0:
            mm.madvise(mmap.MADV_DONTNEED, aligned, length)
    except (AttributeError, ValueError, TypeError, OSError, BufferError):
        pass  # an optimisation only: platforms without madvise keep the pages mapped


class StampSource(ImageSource):
    """One image per file (FITS or ``.npy``), each ``(C, H, W)`` or ``(H, W)``."""

    def __init__(self, folder: str | os.PathLike, paths: Sequence[Path]) -> None:
        self.path = Path(folder)
        self.paths = list(paths)
        if not self.paths:
            raise IngestError(self.path, "empty domain: no stamp files listed")
        first = read_stamp(self.paths[0])
        self.dtype = np.dtype(np.float32)
        self.shape = (len(self.paths), *first.shape)  # type: ignore[assignment]
        self.files = [p.name for p in self.paths]
        check_image_shape(self.paths[0], self.shape, what="stamp")

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.float32)
        for i, p in enumerate(self.paths[start:stop]):
            img = read_stamp(p)
            if img.shape != self.shape[1:]:
                raise IngestError(
                    p,
                    f"stamp shape {_fmt_shape(img.shape)} differs from the first stamp "
                    f"{self.paths[0].name} {_fmt_shape(self.shape[1:])}; all stamps must share "
                    "C, H, W",
                )
            out[i] = img
        return out


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def check_image_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.kind not in "biuf":
        raise IngestError(path, f"images must be a real numeric array; got dtype {dtype}")


def check_image_shape(
    path: str | os.PathLike, shape: Sequence[int], size: int | None = None, what: str = "images"
) -> None:
    """Rank 4, non-empty, square, and ``size`` x ``size`` when given."""
    shape = tuple(int(s) for s in shape)
    if what == "stamp":
        # shape is (N, *stamp_shape); the stamp itself must be (C, H, W)
        if len(shape) != 4:
            raise IngestError(
                path, f"a stamp must be (C, H, W) or (H, W); got shape {_fmt_shape(shape[1:])}"
            )
    elif len(shape) != 4:
        hint = ""
        if len(shape) == 3:
            hint = "; a single-band (N, H, W) array needs a channel axis: np.expand_dims(x, 1)"
        raise IngestError(
            path,
            f"wrong rank: {RANK_HINT}, rank 4; got rank {len(shape)}, shape "
            f"{_fmt_shape(shape)}{hint}",
        )
    n, c, h, w = shape
    if n == 0:
        raise IngestError(path, f"empty domain: no images (shape {_fmt_shape(shape)})")
    if c == 0 or h == 0 or w == 0:
        raise IngestError(path, f"wrong image size: zero-sized axis in shape {_fmt_shape(shape)}")
    looks_channels_last = c == h and w < h and w <= 5
    if h != w:
        hint = ""
        if looks_channels_last:
            hint = (
                f"; this looks channels-last (N, H, W, C) = {_fmt_shape(shape)}: "
                f"{RANK_HINT}, convert with np.moveaxis(x, -1, 1)"
            )
        raise IngestError(
            path,
            f"wrong image size: images must be square (H == W); got shape "
            f"{_fmt_shape(shape)} read as (N, C, H, W){hint}",
        )
    if size is not None and (h, w) != (size, size):
        raise IngestError(
            path, f"wrong image size: images are {h}x{w} pixels, expected {size}x{size} (--size)"
        )


# --------------------------------------------------------------------------------------------
# .npy
# --------------------------------------------------------------------------------------------


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) from a .npy header, or None for header versions we skip."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            return None
        return tuple(shape), np.dtype(dtype), f.tell()


def load_npy(path: str | os.PathLike, mmap: bool = True, what: str = "array") -> np.ndarray:
    """Open a ``.npy`` file (memory-mapped when ``mmap``), refusing corrupt or truncated ones."""
    path = Path(path)
    if not path.exists():
        raise IngestError(path, f"file not found ({what})")
    if not path.is_file():
        raise IngestError(path, f"not a file ({what})")
    size = path.stat().st_size
    if size == 0:
        raise IngestError(path, "corrupt file: it is empty (0 bytes)")
    try:
        header = _npy_header(path)
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise IngestError(path, f"corrupt file: not a readable .npy file ({err})") from err
    if header is not None:
        shape, dtype, offset = header
        if dtype.hasobject:
            raise IngestError(
                path,
                "holds Python objects (a pickled object array); only plain numeric arrays "
                "are accepted",
            )
        expected = offset + math.prod(shape) * dtype.itemsize
        if size < expected:
            raise IngestError(
                path,
                f"truncated file: its header implies a file of {expected} bytes (shape "
                f"{_fmt_shape(shape)}, dtype {dtype}) but the file holds only {size}",
            )
    use_mmap = mmap and header is not None and math.prod(header[0]) > 0
    try:
        arr = np.load(path, mmap_mode="r" if use_mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise IngestError(path, f"corrupt or truncated file: np.load failed ({err})") from err
    if not isinstance(arr, np.ndarray):  # an .npz archive under a .npy name
        raise IngestError(path, "corrupt file: not a single .npy array (an .npz archive?)")
    return arr


def npy_images(path: str | os.PathLike) -> ArraySource:
    arr = load_npy(path, mmap=True, what="images")
    return ArraySource(path, arr)


# --------------------------------------------------------------------------------------------
# labels and galaxy ids
# --------------------------------------------------------------------------------------------


def check_labels(
    path: str | os.PathLike, labels: np.ndarray, n: int, images_name: str
) -> np.ndarray:
    """Validate labels against ``n`` images; return them as uint8 0/1."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise IngestError(path, f"labels must be a 1-D array (N,); got shape {_fmt_shape(y.shape)}")
    if y.dtype.kind not in "biuf":
        raise IngestError(path, f"labels must be numeric 0/1; got dtype {y.dtype}")
    if len(y) != n:
        raise IngestError(
            path, f"X/y length mismatch: {len(y)} labels for {n} images in {images_name}"
        )
    if n == 0:
        raise IngestError(path, "empty domain: no labels")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise IngestError(
            path,
            f"labels outside {{0, 1}}: {int(bad.sum())} of {len(y)} values "
            f"(first: {y[i]!r} at row {i})",
        )
    return y.astype(np.uint8)


def npy_labels(path: str | os.PathLike, n: int, images_name: str) -> np.ndarray:
    return check_labels(path, load_npy(path, mmap=False, what="labels"), n, images_name)


def check_galaxy_ids(
    path: str | os.PathLike, ids: np.ndarray, n: int, images_name: str
) -> np.ndarray:
    g = np.asarray(ids)
    if g.ndim == 2 and g.shape[1] == 1:
        g = g[:, 0]
    if g.ndim != 1:
        raise IngestError(
            path, f"galaxy ids must be a 1-D array (N,); got shape {_fmt_shape(g.shape)}"
        )
    if len(g) != n:
        raise IngestError(
            path, f"length mismatch: {len(g)} galaxy ids for {n} images in {images_name}"
        )
    if g.dtype.kind == "f":
        if not np.isfinite(g).all() or not (g == np.round(g)).all():
            raise IngestError(path, "galaxy ids must be integers")
    elif g.dtype.kind not in "biu":
        raise IngestError(path, f"galaxy ids must be integers; got dtype {g.dtype}")
    return g.astype(np.int64)


def npy_galaxy_ids(path: str | os.PathLike, n: int, images_name: str) -> np.ndarray:
    return check_galaxy_ids(path, load_npy(path, mmap=False, what="galaxy ids"), n, images_name)


# --------------------------------------------------------------------------------------------
# FITS
# --------------------------------------------------------------------------------------------


def _open_fits(path: Path):
    from astropy.io import fits

    if not path.exists():
        raise IngestError(path, "file not found")
    if path.stat().st_size == 0:
        raise IngestError(path, "corrupt file: it is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation is checked explicitly below
            hdul = fits.open(path, memmap=True, do_not_scale_image_data=True)
            hdul.readall()
    except (OSError, ValueError, TypeError, EOFError) as err:
        raise IngestError(path, f"corrupt file: not a readable FITS file ({err})") from err
    return hdul


def _fits_image_hdu(path: Path, hdul) -> Any:
    from astropy.io import fits

    for hdu in hdul:
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            if int(hdu.header.get("NAXIS", 0)) > 0:
                return hdu
    kinds = ", ".join(type(h).__name__ for h in hdul)
    raise IngestError(path, f"FITS file without image data (HDUs: {kinds})")


def _fits_data(path: Path, hdu) -> tuple[Any, float, float, int | None]:
    """The HDU's raw (unscaled, memory-mapped where possible) data, BSCALE, BZERO, BLANK."""
    from astropy.io import fits

    hdr = hdu.header
    naxis = int(hdr.get("NAXIS", 0))
    dims = [int(hdr.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
    bitpix = int(hdr.get("BITPIX", -32))
    compressed = isinstance(hdu, fits.CompImageHDU) or path.suffix.lower() in (".gz", ".fz", ".bz2")
    if not compressed:
        try:
            loc = hdu.fileinfo()["datLoc"]
        except (KeyError, TypeError, AttributeError):
            loc = None
        if loc is not None:
            expected = loc + math.prod(dims) * abs(bitpix) // 8
            size = path.stat().st_size
            if size < expected:
                raise IngestError(
                    path,
                    f"truncated file: the FITS header implies a file of {expected} bytes "
                    f"(image {_fmt_shape(dims[::-1])}, BITPIX {bitpix}) but the file holds only "
                    f"{size}",
                )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = hdu.data
    except (OSError, ValueError, TypeError, EOFError) as err:
        raise IngestError(path, f"corrupt or truncated FITS data ({err})") from err
    if data is None:
        raise IngestError(path, "FITS file without image data")
    scale = float(hdr.get("BSCALE", 1.0))
    zero = float(hdr.get("BZERO", 0.0))
    blank = int(hdr["BLANK"]) if bitpix > 0 and "BLANK" in hdr else None
    return data, scale, zero, blank


def fits_cube(path: str | os.PathLike) -> ArraySource:
    """A FITS image (N, C, H, W) in numpy axis order (NAXIS1 = W, ..., NAXIS4 = N)."""
    path = Path(path)
    hdul = _open_fits(path)
    try:
        hdu = _fits_image_hdu(path, hdul)
        data, scale, zero, blank = _fits_data(path, hdu)
        return ArraySource(path, data, scale, zero, blank, closer=hdul.close)
    except BaseException:
        hdul.close()
        raise


def read_stamp(path: Path) -> np.ndarray:
    """One stamp as float32 (C, H, W); (H, W) gets a channel axis."""
    if not path.exists():
        raise IngestError(path, "stamp file not found")
    if path.suffix.lower() == ".npy":
        arr = np.asarray(load_npy(path, mmap=False, what="stamp"))
        check_image_dtype(path, arr.dtype)
        img = arr.astype(np.float32)
    else:
        hdul = _open_fits(path)
        with hdul:
            hdu = _fits_image_hdu(path, hdul)
            data, scale, zero, blank = _fits_data(path, hdu)
            raw = np.asarray(data)
            check_image_dtype(path, raw.dtype)
            img = raw.astype(np.float32)
            if scale != 1.0 or zero != 0.0:
                img = img * np.float32(scale) + np.float32(zero)
            if blank is not None:
                img[raw == blank] = np.nan
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise IngestError(
            path, f"a stamp must be (C, H, W) or (H, W); got shape {_fmt_shape(img.shape)}"
        )
    return img


# --------------------------------------------------------------------------------------------
# CSV tables (stamps, or labels for a cube)
# --------------------------------------------------------------------------------------------


def read_label_table(
    path: str | os.PathLike, need_filename: bool
) -> tuple[list[str] | None, np.ndarray | None, np.ndarray | None]:
    """Read a CSV with a header: ``filename`` (stamps), optional ``label``, ``galaxy_id``.

    Returns (filenames, labels as float, galaxy ids) with None for absent columns. Label
    values are checked later by :func:`check_labels`.
    """
    path = Path(path)
    if not path.exists():
        raise IngestError(path, "label table not found")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise IngestError(path, f"corrupt CSV file ({err})") from err
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise IngestError(path, "empty CSV file: expected a header line such as filename,label")
    header = [h.strip().lower() for h in rows[0]]
    body = rows[1:]
    known = {"filename", "label", "galaxy_id"}
    if not known & set(header):
        raise IngestError(
            path, f"no recognised column in header {rows[0]}; expected filename, label, galaxy_id"
        )
    if need_filename and "filename" not in header:
        raise IngestError(path, f"missing column 'filename' in header {rows[0]}")
    if not body:
        raise IngestError(path, "empty domain: the CSV has a header but no rows")

    def column(name: str) -> list[str] | None:
        if name not in header:
            return None
        j = header.index(name)
        out = []
        for lineno, r in enumerate(body, start=2):
            if j >= len(r) or not r[j].strip():
                raise IngestError(path, f"line {lineno}: empty '{name}' value")
            out.append(r[j].strip())
        return out

    def numeric(name: str, vals: list[str] | None) -> np.ndarray | None:
        if vals is None:
            return None
        out = []
        for lineno, v in enumerate(vals, start=2):
            try:
                out.append(float(v))
            except ValueError:
                raise IngestError(path, f"line {lineno}: {name} {v!r} is not a number") from None
        return np.asarray(out)

    filenames = column("filename")
    labels = numeric("label", column("label"))
    gids = numeric("galaxy_id", column("galaxy_id"))
    return filenames, labels, gids


def stamp_paths(folder: str | os.PathLike, filenames: Sequence[str], table: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise IngestError(folder, "stamp folder not found")
    paths = [folder / name for name in filenames]
    for lineno, p in enumerate(paths, start=2):
        if not p.is_file():
            raise IngestError(p, f"stamp file not found (listed in {table.name}, line {lineno})")
    return paths


# --------------------------------------------------------------------------------------------
# HDF5 (someone else's layout)
# --------------------------------------------------------------------------------------------


def hdf5_file(path: str | os.PathLike):
    import h5py

    path = Path(path)
    if not path.exists():
        raise IngestError(path, "file not found")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise IngestError(path, f"corrupt file: not a readable HDF5 file ({err})") from err


def hdf5_dataset(path: Path, f, key: str, what: str):
    import h5py

    if key not in f:
        raise IngestError(path, f"no dataset '{key}' ({what}); datasets: {sorted(_h5_keys(f))}")
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise IngestError(path, f"'{key}' is a group, not a dataset ({what})")
    return ds


def _h5_keys(f) -> list[str]:
    import h5py

    keys: list[str] = []
    f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    return keys


def hdf5_read_small(path: Path, ds) -> np.ndarray:
    try:
        return ds[()]
    except (OSError, RuntimeError, ValueError) as err:
        raise IngestError(path, f"corrupt or truncated data in '{ds.name}' ({err})") from err
