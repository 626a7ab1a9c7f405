"""The package's on-disk format: one HDF5 file per domain.

Every producer (``galda.simulate``, ``galda.ingest``) writes it through :class:`DomainWriter`
and every consumer (the DataModule) reads it through :func:`read_domain`, so this module is the
single definition of the layout:

- ``images``    float32 (N, C, H, W), chunked and compressed;
- ``labels``    uint8 (N,), 1 = merger, 0 = non-merger; absent for unlabelled data;
- ``galaxy_id`` int64 (N,), the physical system an image shows (splits are made on it);
- ``params/``   group of optional per-image 1-D columns (fluxes, radii, ...), NaN where undefined;
- attributes:   ``schema_version``, ``domain``, ``band_names``, ``pixel_scale_arcsec``,
  ``psf_fwhm_arcsec``, ``noise_sigma``, ``galda_version``, ``producer`` and any extras.

Files are written under a temporary name in the same folder and renamed on success, so a killed
writer never leaves a partial file at the final path.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from galda import __version__

SCHEMA_VERSION = 1
REQUIRED_ATTRS = ("schema_version", "domain")


class DataFormatError(ValueError):
    """A data file is missing, unreadable or does not follow the galda layout.

    The message always names the file and the problem.
    """


@dataclass
class DomainData:
    """One domain's images with their labels, galaxy ids, parameters and attributes."""

    images: np.ndarray
    labels: np.ndarray | None
    galaxy_id: np.ndarray
    params: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _clean_attr(value: Any) -> Any:
    """Convert attribute values to types HDF5 stores portably."""
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return np.array(value, dtype=h5py.string_dtype())
        return np.asarray(value)
    if value is None:
        return "none"
    return value


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in ("O", "S", "U"):
            return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class DomainWriter:
    """Write a domain file incrementally and atomically.

    Usage::

        with DomainWriter(path, n=N, image_shape=(3, 75, 75), labelled=True, attrs={...}) as w:
            w.write(start, images, labels, galaxy_id, params)

    On a clean exit the temporary file is renamed to ``path``; on an exception it is deleted and
    any existing file at ``path`` is left untouched. An existing ``path`` is refused unless
    ``overwrite=True``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        image_shape: tuple[int, int, int],
        labelled: bool = True,
        attrs: dict[str, Any] | None = None,
        param_names: list[str] | tuple[str, ...] = (),
        overwrite: bool = False,
        chunk_images: int = 64,
        compression: str | None = "gzip",
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path}: already exists (use --force / overwrite=True)")
        if n <= 0:
            raise DataFormatError(f"{self.path}: refusing to write an empty domain (N = {n})")
        self.n = int(n)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.labelled = labelled
        self.attrs = dict(attrs or {})
        self.param_names = list(param_names)
        self.chunk_images = max(1, min(chunk_images, self.n))
        self.compression = compression
        self._tmp: Path | None = None
        self._file: h5py.File | None = None

    def __enter__(self) -> DomainWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        os.close(fd)
        self._tmp = Path(tmp)
        f = h5py.File(self._tmp, "w")
        self._file = f
        opts: dict[str, Any] = {}
        if self.compression:
            opts = {"compression": self.compression, "shuffle": True}
        f.create_dataset(
            "images",
            shape=(self.n, *self.image_shape),
            dtype="float32",
            chunks=(self.chunk_images, *self.image_shape),
            **opts,
        )
        if self.labelled:
            f.create_dataset("labels", shape=(self.n,), dtype="uint8")
        f.create_dataset("galaxy_id", shape=(self.n,), dtype="int64")
        grp = f.create_group("params")
        for name in self.param_names:
            grp.create_dataset(name, shape=(self.n,), dtype="float32", fillvalue=np.nan)
        attrs = {
            "schema_version": SCHEMA_VERSION,
            "galda_version": __version__,
            "n_images": self.n,
            **self.attrs,
        }
        for key, value in attrs.items():
            f.attrs[key] = _clean_attr(value)
        return self

    def write(
        self,
        start: int,
        images: np.ndarray,
        labels: np.ndarray | None,
        galaxy_id: np.ndarray,
        params: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write rows ``start : start + len(images)``."""
        assert self._file is not None, "use DomainWriter as a context manager"
        stop = start + len(images)
        self._file["images"][start:stop] = np.asarray(images, dtype=np.float32)
        if self.labelled:
            if labels is None:
                raise DataFormatError(f"{self.path}: labels expected for a labelled domain")
            self._file["labels"][start:stop] = np.asarray(labels).astype(np.uint8)
        self._file["galaxy_id"][start:stop] = np.asarray(galaxy_id, dtype=np.int64)
        for name, col in (params or {}).items():
            if name not in self._file["params"]:
                raise KeyError(f"parameter column {name!r} was not declared in param_names")
            self._file["params"][name][start:stop] = np.asarray(col, dtype=np.float32)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None and self._tmp is not None
        try:
            self._file.close()
            if exc_type is None:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual mode
                os.replace(self._tmp, self.path)
        finally:  # a failed close or rename (disk full, permissions) leaves no temporary file
            self._tmp.unlink(missing_ok=True)


def write_domain(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray | None,
    galaxy_id: np.ndarray,
    params: dict[str, np.ndarray] | None = None,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a whole domain at once (atomic; see :class:`DomainWriter`)."""
    params = params or {}
    with DomainWriter(
        path,
        n=len(images),
        image_shape=tuple(images.shape[1:]),
        labelled=labels is not None,
        attrs=attrs,
        param_names=list(params),
        overwrite=overwrite,
    ) as w:
        w.write(0, images, labels, galaxy_id, params)
    return Path(path)


def read_domain(path: str | os.PathLike, load_images: bool = True) -> DomainData:
    """Read and validate a domain file; raise :class:`DataFormatError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataFormatError(f"{path}: not a readable HDF5 file ({err})") from err
    with f:
        for key in ("images", "galaxy_id"):
            if key not in f:
                raise DataFormatError(f"{path}: missing dataset '{key}' (not a galda domain file?)")
        attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
        for key in REQUIRED_ATTRS:
            if key not in attrs:
                raise DataFormatError(f"{path}: missing attribute '{key}'")
        if int(attrs["schema_version"]) > SCHEMA_VERSION:
            raise DataFormatError(
                f"{path}: schema version {attrs['schema_version']} is newer than this galda "
                f"({SCHEMA_VERSION}); upgrade galda"
            )
        shape = f["images"].shape
        if len(shape) != 4:
            raise DataFormatError(f"{path}: 'images' must have rank 4 (N, C, H, W), got {shape}")
        n = shape[0]
        try:
            images = f["images"][()] if load_images else np.empty((0, *shape[1:]), np.float32)
            labels = f["labels"][()].astype(np.int64) if "labels" in f else None
            galaxy_id = f["galaxy_id"][()].astype(np.int64)
            params = {k: v[()] for k, v in f["params"].items()} if "params" in f else {}
        except (OSError, RuntimeError) as err:
            raise DataFormatError(f"{path}: corrupt or truncated data ({err})") from err
    if len(galaxy_id) != n or (labels is not None and len(labels) != n):
        raise DataFormatError(f"{path}: images, labels and galaxy_id differ in length")
    if labels is not None and not np.isin(labels, (0, 1)).all():
        raise DataFormatError(f"{path}: labels must be 0 or 1")
    return DomainData(images, labels, galaxy_id, params, attrs, path)
