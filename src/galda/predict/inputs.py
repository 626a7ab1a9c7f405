"""Images to classify, opened with ``galda.ingest``'s readers, plus their ids and sky positions.

:func:`open_input` accepts what ``galda.ingest`` reads — a galda (or other) HDF5 file, an ``.npy``
array, a FITS cube (N, C, H, W), or a folder of stamps (FITS or ``.npy``, one image each) — and
returns a :class:`PredictInput` whose images are read in chunks (memory-mapped ``.npy`` and FITS,
chunked HDF5, one file per stamp). Per-row metadata:

- object id: an HDF5 dataset (``galaxy_id`` by default, or ``id_key``), a FITS header keyword of
  each stamp (``id_key``), or a CSV column (``ids="table.csv:column"``; rows in input order, or
  joined on a ``filename`` column for a stamp folder);
- RA/Dec in degrees: the ``RA``/``DEC`` header keywords of a stamp, else the world position of the
  stamp's centre pixel through its celestial WCS (``CRVAL1/2`` at the reference pixel); for HDF5,
  ``params/ra`` and ``params/dec`` when present.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from galda.errors import GaldaError
from galda.ingest.errors import IngestError
from galda.ingest.sources import (
    ArraySource,
    ImageSource,
    StampSource,
    fits_cube,
    hdf5_dataset,
    hdf5_file,
    hdf5_read_small,
    npy_images,
)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz", ".fz")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
STAMP_SUFFIXES = (*FITS_SUFFIXES, ".npy")


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


@dataclass
class PredictInput:
    """An image source with its per-row metadata.

    ``ids`` / ``ra`` / ``dec`` are whole arrays when known up front (small: one value per image);
    stamp headers are read chunk by chunk in :meth:`metadata`.
    """

    path: Path
    kind: str  # "hdf5" | "npy" | "fits-cube" | "stamps"
    source: ImageSource
    ids: np.ndarray | None = None
    id_origin: str | None = None
    ra: np.ndarray | None = None
    dec: np.ndarray | None = None
    stamp_paths: list[Path] | None = None
    header_id_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.source.image_shape

    @property
    def has_ids(self) -> bool:
        return self.ids is not None or self.header_id_key is not None

    def row_path(self, row: int) -> Path:
        """The file holding row ``row`` (the stamp for a folder)."""
        return self.stamp_paths[row] if self.stamp_paths is not None else self.path

    def file_column(self) -> np.ndarray:
        """Per-row file name: the stamp for a folder, else the input file."""
        if self.stamp_paths is not None:
            return np.asarray([p.name for p in self.stamp_paths], dtype=str)
        return np.full(len(self), self.path.name)

    def metadata(self, start: int, stop: int) -> dict[str, Any]:
        """``object_id``, ``ra``, ``dec`` for rows ``start:stop`` (keys only where known)."""
        out: dict[str, Any] = {}
        if self.ids is not None:
            out["object_id"] = self.ids[start:stop]
        if self.ra is not None and self.dec is not None:
            out["ra"], out["dec"] = self.ra[start:stop], self.dec[start:stop]
        if self.kind == "stamps" and self.stamp_paths is not None:
            headers = [_stamp_header(p) for p in self.stamp_paths[start:stop]]
            if self.header_id_key is not None:
                out["object_id"] = [
                    _header_id(p, h, self.header_id_key)
                    for p, h in zip(self.stamp_paths[start:stop], headers, strict=True)
                ]
            if self.ra is None:
                sky = np.array([_header_sky(h, self.image_shape) for h in headers], np.float64)
                out["ra"], out["dec"] = sky[:, 0], sky[:, 1]
        return out

    def close(self) -> None:
        self.source.close()
        closer = self.extra.pop("closer", None)
        if closer is not None:
            closer()


# --------------------------------------------------------------------------------------------
# FITS headers of stamps
# --------------------------------------------------------------------------------------------


def _stamp_header(path: Path) -> Any:
    """The primary header merged with the first image HDU's header (None for .npy stamps)."""
    if not _has_suffix(path, FITS_SUFFIXES):
        return None
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=True) as hdul:
                header = hdul[0].header.copy()
                for hdu in hdul[1:]:
                    if hdu.is_image and int(hdu.header.get("NAXIS", 0)) > 0:
                        header.update(hdu.header)
                        break
    except (OSError, ValueError) as err:
        raise IngestError(path, f"unreadable FITS header ({err})") from err
    return header


def _header_id(path: Path, header: Any, key: str) -> Any:
    if header is None or key not in header:
        raise IngestError(
            path,
            f"no header keyword {key} (--id-key); give ids with --ids "
            "TABLE.csv:COLUMN or name a keyword every stamp has",
        )
    value = header[key]
    return value.strip() if isinstance(value, str) else value


def _angle(value: Any, unit: str) -> float:
    if isinstance(value, (int, float, np.number)):
        return float(value)
    from astropy.coordinates import Angle

    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:  # sexagesimal: RA in hours, Dec in degrees
        return float(Angle(text, unit=unit).degree)
    except (ValueError, TypeError):
        return float("nan")


def _header_sky(header: Any, image_shape: tuple[int, int, int]) -> tuple[float, float]:
    """(RA, Dec) in degrees: RA/DEC keywords, else the WCS position of the centre pixel."""
    if header is None:
        return (np.nan, np.nan)
    if "RA" in header and "DEC" in header:
        return _angle(header["RA"], "hourangle"), _angle(header["DEC"], "deg")
    if str(header.get("CTYPE1", "")).upper().startswith("RA"):
        from astropy.wcs import WCS

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wcs = WCS(header).celestial
                h, w = image_shape[1], image_shape[2]
                ra, dec = wcs.all_pix2world([[(w - 1) / 2.0, (h - 1) / 2.0]], 0)[0]
            return float(ra), float(dec)
        except Exception:  # noqa: BLE001 - a malformed WCS leaves the position unknown
            return (np.nan, np.nan)
    return (np.nan, np.nan)


# --------------------------------------------------------------------------------------------
# ids from a CSV table
# --------------------------------------------------------------------------------------------


def _parse_ids_spec(spec: str) -> tuple[Path, str]:
    path, sep, column = spec.rpartition(":")
    if not sep or not path or not column:
        raise GaldaError(f"--ids {spec}: expected TABLE.csv:COLUMN, e.g. --ids objects.csv:objid")
    return Path(path), column


def _typed(values: list[str]) -> np.ndarray:
    """Integers when every value is one, else strings."""
    try:
        ints = [int(v) for v in values]
        return np.asarray(ints, dtype=np.int64)
    except ValueError:
        return np.asarray(values, dtype=str)


def read_id_table(
    spec: str, n: int, input_name: str, stamp_names: list[str] | None = None
) -> np.ndarray:
    """Object ids from ``TABLE.csv:COLUMN``: one row per image in input order, or joined on a
    ``filename`` column when the input is a stamp folder."""
    path, column = _parse_ids_spec(spec)
    if not path.is_file():
        raise GaldaError(f"{path}: id table not found (--ids)")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise GaldaError(f"{path}: unreadable CSV ({err})") from err
    if column not in header:
        raise GaldaError(
            f"{path}: no column {column!r} (columns: {', '.join(header)}); "
            "fix --ids TABLE.csv:COLUMN"
        )
    if stamp_names is not None and "filename" in header:
        by_name = {Path(r["filename"]).name: r[column] for r in rows}
        missing = [s for s in stamp_names if s not in by_name]
        if missing:
            raise GaldaError(
                f"{path}: no row for stamp {missing[0]} (and {len(missing) - 1} more) "
                "in its filename column; list every stamp of the folder"
            )
        return _typed([by_name[s] for s in stamp_names])
    if len(rows) != n:
        raise GaldaError(
            f"{path}: {len(rows)} ids for {n} images in {input_name}; the table needs "
            "one row per image, in input order (or a filename column for stamps)"
        )
    return _typed([r[column] for r in rows])


# --------------------------------------------------------------------------------------------
# opening inputs
# --------------------------------------------------------------------------------------------


def _open_hdf5(path: Path, images_key: str, id_key: str | None) -> PredictInput:
    f = hdf5_file(path)
    try:
        source = ArraySource(path, hdf5_dataset(path, f, images_key, "images"))
        n = len(source)
        ids = origin = None
        key = id_key or ("galaxy_id" if "galaxy_id" in f else None)
        if key is not None:
            ids = np.asarray(hdf5_read_small(path, hdf5_dataset(path, f, key, "object ids")))
            if ids.shape != (n,):
                raise GaldaError(
                    f"{path}: dataset '{key}' has shape {ids.shape}; object ids need "
                    f"one value per image ({n},)"
                )
            if ids.dtype.kind in "SO":
                ids = ids.astype(str)
            origin = f"HDF5 dataset {key}"
        ra = dec = None
        for prefix in ("params/", ""):
            if f"{prefix}ra" in f and f"{prefix}dec" in f:
                ra = np.asarray(hdf5_read_small(path, f[f"{prefix}ra"]), np.float64)
                dec = np.asarray(hdf5_read_small(path, f[f"{prefix}dec"]), np.float64)
                break
        return PredictInput(path, "hdf5", source, ids, origin, ra, dec, extra={"closer": f.close})
    except BaseException:
        f.close()
        raise


def _stamp_files(folder: Path) -> list[Path]:
    paths = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and _has_suffix(p, STAMP_SUFFIXES) and not p.name.startswith(".")
    )
    if not paths:
        raise GaldaError(
            f"{folder}: no stamp files (*.fits, *.fit, *.fits.gz, *.fz, *.npy) in this folder"
        )
    return paths


def open_input(
    path: str | os.PathLike,
    id_key: str | None = None,
    ids: str | None = None,
    images_key: str = "images",
) -> PredictInput:
    """Open images to classify (see the module docstring); raises GaldaError / IngestError."""
    path = Path(path)
    if not path.exists():
        raise GaldaError(f"{path}: input not found")
    if path.is_dir():
        paths = _stamp_files(path)
        inp = PredictInput(path, "stamps", StampSource(path, paths), stamp_paths=paths)
        if id_key is not None:
            _header_id(paths[0], _stamp_header(paths[0]), id_key)  # fail before any work
            inp.header_id_key, inp.id_origin = id_key, f"FITS keyword {id_key}"
    elif _has_suffix(path, HDF5_SUFFIXES):
        inp = _open_hdf5(path, images_key, id_key)
    elif path.suffix.lower() == ".npy":
        inp = PredictInput(path, "npy", npy_images(path))
    elif _has_suffix(path, FITS_SUFFIXES):
        inp = PredictInput(path, "fits-cube", fits_cube(path))
    else:
        raise GaldaError(
            f"{path}: unknown input type; give an .h5/.hdf5 file, an .npy array, a "
            "FITS cube (.fits) or a folder of stamps"
        )
    if id_key is not None and inp.kind in ("npy", "fits-cube"):
        inp.close()
        raise GaldaError(
            f"--id-key {id_key}: a {inp.kind} input has no per-image keywords; give "
            "ids with --ids TABLE.csv:COLUMN"
        )
    if ids is not None:
        try:
            names = [p.name for p in inp.stamp_paths] if inp.stamp_paths is not None else None
            inp.ids = read_id_table(ids, len(inp), path.name, names)
        except BaseException:
            inp.close()
            raise
        inp.header_id_key, inp.id_origin = None, f"column of {ids}"
    return inp
