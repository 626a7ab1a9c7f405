"""Library entry points for one domain: generic ``.npy`` pairs, FITS cubes and stamps, HDF5.

Each opens and validates its inputs, then hands a :class:`DomainInput` to
:func:`galda.ingest.convert.ingest_domain`, which scans for non-finite pixels and writes the
galda domain file atomically. Common keyword options (``force``, ``drop_nonfinite``, ``size``,
``match``, ``chunk_size``, ``progress``, ``report``) are those of ``ingest_domain``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galda.ingest.convert import DomainInput, check_domain_name, check_not_input, ingest_domain
from galda.ingest.errors import IngestError
from galda.ingest.sources import (
    ArraySource,
    StampSource,
    check_galaxy_ids,
    check_labels,
    fits_cube,
    hdf5_dataset,
    hdf5_file,
    hdf5_read_small,
    npy_galaxy_ids,
    npy_images,
    npy_labels,
    read_label_table,
    stamp_paths,
)


def _meta(
    dataset: str | None,
    band_names: Sequence[str] | str | None,
    pixel_scale_arcsec: float | None,
    input_format: str,
) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "band_names": band_names,
        "pixel_scale_arcsec": pixel_scale_arcsec,
        "input_format": input_format,
    }


def ingest_npy(
    x: str | os.PathLike,
    out: str | os.PathLike,
    domain: str,
    y: str | os.PathLike | None = None,
    galaxy_ids: str | os.PathLike | None = None,
    dataset: str | None = None,
    band_names: Sequence[str] | str | None = None,
    pixel_scale_arcsec: float | None = None,
    **options: Any,
) -> Path:
    """Convert an images ``.npy`` (N, C, H, W), memory-mapped, with optional labels and ids."""
    check_domain_name(domain)
    images = npy_images(x)
    try:
        xname = Path(x).name
        labels = npy_labels(y, len(images), xname) if y is not None else None
        gids = npy_galaxy_ids(galaxy_ids, len(images), xname) if galaxy_ids is not None else None
        files = [Path(p).name for p in (x, y, galaxy_ids) if p is not None]
        attrs = _meta(dataset or Path(x).stem, band_names, pixel_scale_arcsec, "npy")
        inputs = [Path(p) for p in (y, galaxy_ids) if p is not None]
        inp = DomainInput(domain, images, labels, gids, attrs, files, inputs)
        return ingest_domain(inp, out, **options)
    finally:
        images.close()


def _table_columns(
    table: Path, labels: np.ndarray | None, gids: np.ndarray | None, n: int, name: str
) -> tuple[np.ndarray | None, np.ndarray | None]:
    lab = check_labels(table, labels, n, name) if labels is not None else None
    gid = check_galaxy_ids(table, gids, n, name) if gids is not None else None
    return lab, gid


def ingest_fits_cube(
    cube: str | os.PathLike,
    out: str | os.PathLike,
    domain: str,
    labels: str | os.PathLike | None = None,
    y: str | os.PathLike | None = None,
    galaxy_ids: str | os.PathLike | None = None,
    dataset: str | None = None,
    band_names: Sequence[str] | str | None = None,
    pixel_scale_arcsec: float | None = None,
    **options: Any,
) -> Path:
    """Convert the first image HDU of a FITS file, shaped (N, C, H, W) in numpy order.

    Labels come from a CSV (``labels``: columns ``label`` and/or ``galaxy_id``, one row per
    image in cube order) or from ``.npy`` files (``y``, ``galaxy_ids``).
    """
    check_domain_name(domain)
    if labels is not None and y is not None:
        raise IngestError(None, "give labels either as a CSV (--labels) or as .npy (--y), not both")
    images = fits_cube(cube)
    try:
        name = Path(cube).name
        n = len(images)
        lab = gid = None
        files = [name]
        if labels is not None:
            _, tl, tg = read_label_table(labels, need_filename=False)
            lab, gid = _table_columns(Path(labels), tl, tg, n, name)
            files.append(Path(labels).name)
        if y is not None:
            lab = npy_labels(y, n, name)
            files.append(Path(y).name)
        if galaxy_ids is not None:
            gid = npy_galaxy_ids(galaxy_ids, n, name)
            files.append(Path(galaxy_ids).name)
        attrs = _meta(dataset or Path(cube).stem, band_names, pixel_scale_arcsec, "fits-cube")
        inputs = [Path(p) for p in (labels, y, galaxy_ids) if p is not None]
        inp = DomainInput(domain, images, lab, gid, attrs, files, inputs)
        return ingest_domain(inp, out, **options)
    finally:
        images.close()


def ingest_fits_stamps(
    folder: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    domain: str,
    dataset: str | None = None,
    band_names: Sequence[str] | str | None = None,
    pixel_scale_arcsec: float | None = None,
    **options: Any,
) -> Path:
    """Convert a folder of stamps (FITS or .npy, each (C, H, W) or (H, W)) listed in a CSV.

    The CSV has a header with ``filename`` (relative to ``folder``), and optionally ``label``
    (0/1; leave the column out for an unlabelled target) and ``galaxy_id``. Rows keep CSV order.
    """
    check_domain_name(domain)
    table = Path(labels)
    names, tl, tg = read_label_table(table, need_filename=True)
    assert names is not None
    images = StampSource(folder, stamp_paths(folder, names, table))
    lab, gid = _table_columns(table, tl, tg, len(images), table.name)
    attrs = _meta(dataset or Path(folder).name, band_names, pixel_scale_arcsec, "fits-stamps")
    attrs["stamp_folder"] = str(Path(folder).name)
    files = [table.name, f"{len(names)} stamps in {Path(folder).name}/"]
    inp = DomainInput(domain, images, lab, gid, attrs, files, [table])
    return ingest_domain(inp, out, **options)


def ingest_hdf5(
    path: str | os.PathLike,
    out: str | os.PathLike,
    domain: str,
    images_key: str = "images",
    labels_key: str | None = None,
    galaxy_id_key: str | None = None,
    dataset: str | None = None,
    band_names: Sequence[str] | str | None = None,
    pixel_scale_arcsec: float | None = None,
    **options: Any,
) -> Path:
    """Convert datasets of another HDF5 layout: images (N, C, H, W), optional labels and ids."""
    check_domain_name(domain)
    path = Path(path)
    check_not_input(Path(out), [path])
    f = hdf5_file(path)
    try:
        ds = hdf5_dataset(path, f, images_key, "images")
        images = ArraySource(path, ds)
        n = len(images)
        lab = gid = None
        if labels_key is not None:
            raw = hdf5_read_small(path, hdf5_dataset(path, f, labels_key, "labels"))
            lab = check_labels(path, raw, n, f"'{images_key}'")
        if galaxy_id_key is not None:
            raw = hdf5_read_small(path, hdf5_dataset(path, f, galaxy_id_key, "galaxy ids"))
            gid = check_galaxy_ids(path, raw, n, f"'{images_key}'")
        attrs = _meta(dataset or path.stem, band_names, pixel_scale_arcsec, "hdf5")
        inp = DomainInput(domain, images, lab, gid, attrs, [path.name])
        return ingest_domain(inp, out, **options)
    finally:
        f.close()
