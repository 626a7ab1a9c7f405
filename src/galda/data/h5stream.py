"""Out-of-core training data: batches read from a galda domain file when they are drawn.

The in-memory path (``galda.data.datamodule``) normalises whole domains into tensors and serves
batches of an :class:`~galda.data.datamodule.EpochSeededSampler` permutation. This module serves
the same batches without holding the images:

- :class:`EpochSeededBatchSampler` groups that very sampler's permutation into batches, with the
  same ``drop_last``; Lightning's ``set_epoch`` reaches it through ``batch_sampler.sampler``.
- :class:`H5StreamDataset` maps dataset index i to file row ``rows[i]`` (as the in-memory split
  tensors do), reads a batch's rows in increasing order, puts them back in batch order and
  normalises with the same float32 operations, ``(x − mean) / std``, so every batch is
  bit-identical to the in-memory one.
- :class:`H5RowReader` does the reading. When the ``images`` dataset is stored without filters
  (contiguous, or chunked with no compression), each row's byte offset is known and a batch is a
  handful of ``os.pread`` calls (adjacent rows merged); otherwise it reads each touched chunk's
  rows as one slice. Random batches from gzip chunks of 64 images (galda's default layout)
  decompress a chunk per image, about 250× slower (69 against 16,800 images/s measured):
  :func:`rechunk_for_streaming` writes a copy with one uncompressed chunk per image, the layout
  this path is meant for (:func:`streaming_layout` tells which one a file has).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset

from galda.data.datamodule import EpochSeededSampler, block_channel_stats, identity_collate
from galda.data.h5format import DataFormatError, DomainWriter, read_domain
from galda.errors import ConfigError, GaldaError

__all__ = [
    "OUT_OF_CORE_AUTO_BYTES",
    "EpochSeededBatchSampler",
    "H5RowReader",
    "H5StreamDataset",
    "StreamedImages",
    "channel_stats_streamed",
    "image_bytes",
    "rechunk_for_streaming",
    "stream_loader",
    "streaming_layout",
    "use_out_of_core",
]

#: ``data.out_of_core: auto`` streams when the decoded images of both domains exceed this many
#: bytes (4 GiB, about 64,000 images of 3×75×75) or a quarter of the available memory, whichever
#: is smaller. The in-memory setup peaks near three times the image bytes (file read, normalised
#: copy, split copies), so below the threshold it needs at most ~12 GiB.
OUT_OF_CORE_AUTO_BYTES = 4 * 2**30


class EpochSeededBatchSampler(BatchSampler):
    """Batches of :class:`EpochSeededSampler`'s permutation of ``range(n)`` for ``(seed, epoch)``.

    Identical to a ``DataLoader(batch_size=..., sampler=EpochSeededSampler(n, seed),
    drop_last=...)``'s batches; ``set_epoch`` is passed to the inner sampler.
    """

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool) -> None:
        super().__init__(EpochSeededSampler(n, seed), batch_size, drop_last)

    def set_epoch(self, epoch: int) -> None:
        sampler = self.sampler
        assert isinstance(sampler, EpochSeededSampler)
        sampler.set_epoch(epoch)


def _raw_row_offsets(ds: h5py.Dataset) -> np.ndarray | None:
    """Byte offset of every row of an unfiltered dataset in its file, else None."""
    if ds.compression is not None or ds.shuffle or ds.fletcher32 or ds.scaleoffset is not None:
        return None
    if ds.id.get_create_plist().get_nfilters():
        return None
    n = ds.shape[0]
    row_bytes = int(np.prod(ds.shape[1:])) * ds.dtype.itemsize
    if ds.chunks is None:
        offset = ds.id.get_offset()
        return None if offset is None else offset + np.arange(n, dtype=np.int64) * row_bytes
    if tuple(ds.chunks[1:]) != tuple(ds.shape[1:]):
        return None  # a chunk splits rows: the rows are not contiguous
    per_chunk = ds.chunks[0]
    starts = np.full(-(-n // per_chunk), -1, dtype=np.int64)

    def visit(info: Any) -> None:
        starts[info.chunk_offset[0] // per_chunk] = info.byte_offset

    try:
        ds.id.chunk_iter(visit)
    except AttributeError:  # HDF5 < 1.12.3: one query per chunk
        for i in range(ds.id.get_num_chunks()):
            visit(ds.id.get_chunk_info(i))
    if (starts < 0).any():
        return None  # unwritten chunks read as fill values through HDF5 only
    rows = np.arange(n, dtype=np.int64)
    return starts[rows // per_chunk] + (rows % per_chunk) * row_bytes


class H5RowReader:
    """Reads rows of one dataset of an HDF5 file, in increasing row order, as float32 arrays.

    Opens the file lazily in each process (safe with DataLoader workers); pickles without it.
    ``threads``: reader threads for the raw layout. Measured on 2 shared cores, batches of 128
    random rows of a 1.35 GB file: 1 → 4 threads took uncached reads from 6.5k to 9.6k
    images/s, and cached ones from 58k to 52k (still far above training).
    """

    def __init__(self, path: str | os.PathLike, key: str = "images", threads: int = 4) -> None:
        self.path = Path(path)
        self.key = key
        self.threads = int(threads)
        self._pid: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        with h5py.File(self.path, "r") as f:
            if key not in f:
                raise DataFormatError(f"{self.path}: missing dataset '{key}'")
            ds = f[key]
            self.shape = tuple(ds.shape)
            self.dtype = np.dtype(ds.dtype)
            self.chunks = ds.chunks
            self.offsets = _raw_row_offsets(ds)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def __getstate__(self) -> dict[str, Any]:
        skip = ("_fd", "_file", "_pid", "_pool")
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid, self._pool = None, None

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        self._pool = None  # a forked child has the parent's pool object but not its threads
        if self.offsets is not None:
            self._fd = os.open(self.path, os.O_RDONLY)
        else:
            self._file = h5py.File(self.path, "r")
        self._pid = os.getpid()

    def read(self, rows: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (strictly increasing) as an array of shape (len(rows), *row shape).

        With ``positions``, row ``rows[k]`` lands at ``out[positions[k]]`` (a batch's own order),
        read there directly.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= self.shape[0]):
            raise ValueError(
                f"{self.path}: rows must be increasing and within [0, {self.shape[0]})"
            )
        where = np.arange(len(rows)) if positions is None else np.asarray(positions, np.int64)
        self._open()
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if self.offsets is not None:
            self._pread_rows(rows, where, out)
        else:
            self._read_by_chunk(rows, where, out)
        return out

    def _pread_rows(self, rows: np.ndarray, where: np.ndarray, out: np.ndarray) -> None:
        """One pread per run of rows stored back to back and wanted side by side; the runs
        spread over ``threads`` threads (preads release the GIL: more disk requests in flight
        when cold, two cores copying when cached)."""
        assert self.offsets is not None  # the raw layout: byte offsets are known
        offsets = self.offsets[rows]
        flat = out.reshape(len(rows), -1).view(np.uint8)
        joined = (np.diff(offsets) == self.row_bytes) & (np.diff(where) == 1)
        breaks = np.flatnonzero(~joined) + 1
        runs = list(zip(np.r_[0, breaks], np.r_[breaks, len(rows)]))

        def read_runs(part: list[tuple[int, int]]) -> None:
            for start, stop in part:
                first = where[start]
                view = memoryview(flat[first : first + stop - start]).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
                if os.preadv(self._fd, [view], int(offsets[start])) != view.nbytes:
                    raise DataFormatError(f"{self.path}: short read (file truncated?)")

        if self.threads < 2 or len(runs) < 4 * self.threads:
            read_runs(runs)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="h5stream")
        parts = [runs[i :: self.threads] for i in range(self.threads)]
        for done in self._pool.map(read_runs, parts):
            del done

    def _read_by_chunk(self, rows: np.ndarray, where: np.ndarray, out: np.ndarray) -> None:
        """Each touched chunk once, as a slice; the wanted rows taken from it."""
        ds = self._file[self.key]
        per_chunk = self.chunks[0] if self.chunks else max(1, self.shape[0])
        breaks = np.flatnonzero(np.diff(rows // per_chunk)) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            first, last = int(rows[start]), int(rows[stop - 1])
            block = ds[first : last + 1]
            out[where[start:stop]] = block[rows[start:stop] - first]


class H5StreamDataset(Dataset):
    """Rows ``rows`` of a domain file, normalised on the fly: index i ↦ file row ``rows[i]``.

    ``(x − mean) / std`` per channel in float32, the in-memory path's operations, so a batch is
    bit-identical to the one the in-memory ``ArrayDataset`` of the same rows gives, in the same
    form: ``x`` or ``(x, y)`` for training, and with ``evaluation=True`` the dict
    ``{"image", "index"[, "label"]}`` (``index``: the file row) of the evaluation splits.
    ``__getitems__`` reads a whole batch: rows sorted for the read, put in batch order as read.
    Labels (small) are held in memory: ``labels=True`` reads the file's column, an array is
    taken as that column (one label per file row), ``labels=False`` leaves them out (target
    training data). Like ``ArrayDataset``, ``rows`` holds the file rows of an evaluation set
    (None in training) and ``images`` is indexable (int, slice, index array) and has a length.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        rows: Sequence[int] | np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        labels: bool | np.ndarray = True,
        channels_last: bool = False,
        evaluation: bool = False,
    ) -> None:
        self.reader = H5RowReader(path)
        self.file_rows = np.asarray(rows, dtype=np.int64)
        self.images = StreamedImages(self)
        channels = self.reader.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise GaldaError(f"{path}: mean/std need {channels} values (one per channel)")
        self.mean = torch.tensor(list(mean), dtype=torch.float32)[None, :, None, None]
        self.std = torch.tensor(list(std), dtype=torch.float32)[None, :, None, None]
        self.channels_last = bool(channels_last)
        self.evaluation = bool(evaluation)
        self.rows: Tensor | None = torch.from_numpy(self.file_rows) if evaluation else None
        self.labels: Tensor | None = None
        if isinstance(labels, np.ndarray):
            if len(labels) != self.reader.shape[0]:
                raise GaldaError(f"{path}: {len(labels)} labels for {self.reader.shape[0]} rows")
            self.labels = torch.from_numpy(np.asarray(labels)[self.file_rows])
        elif labels:
            domain = read_domain(path, load_images=False)
            if domain.labels is None:
                raise GaldaError(f"{path}: no labels in this file")
            self.labels = torch.from_numpy(domain.labels[self.file_rows])

    def __len__(self) -> int:
        return len(self.file_rows)

    def read_images(self, indices: Sequence[int] | np.ndarray) -> Tensor:
        """Normalised images of dataset indices ``indices``, in that order."""
        file_rows = self.file_rows[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(file_rows, kind="stable")
        x = torch.from_numpy(self.reader.read(file_rows[order], positions=order))
        x.sub_(self.mean).div_(self.std)  # in place; the same two roundings as (x − m) / s
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __getitems__(self, indices: Sequence[int]) -> Any:
        idx = np.asarray(indices, dtype=np.int64)
        x = self.read_images(idx)
        if self.evaluation:
            item = {"image": x, "index": torch.from_numpy(self.file_rows[idx])}
            if self.labels is not None:
                item["label"] = self.labels[torch.from_numpy(idx)]
            return item
        if self.labels is None:
            return x
        return x, self.labels[torch.from_numpy(idx)]

    def __getitem__(self, index: int) -> Any:
        batch = self.__getitems__([index])
        if isinstance(batch, dict):
            return {k: v[0] for k, v in batch.items()}
        return tuple(v[0] for v in batch) if isinstance(batch, tuple) else batch[0]


class StreamedImages:
    """The normalised images of an :class:`H5StreamDataset`, read when indexed.

    Stands in for ``ArrayDataset.images`` where code walks a split's images (AdaBN statistics,
    diagnostics): ``len``, ``shape``, ``device`` and indexing by an int, a slice or an index
    array (repeats allowed) give what the in-memory tensor would.
    """

    device = torch.device("cpu")

    def __init__(self, dataset: H5StreamDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.dataset), *self.dataset.reader.shape[1:]))

    def __getitem__(self, key: Any) -> Tensor:
        n = len(self.dataset)
        if isinstance(key, (int, np.integer)):
            if not -n <= int(key) < n:
                raise IndexError(f"index {int(key)} out of range for {n} images")
            return self.dataset.read_images([int(key) % n])[0]
        if isinstance(key, slice):
            idx = np.arange(n)[key]
        else:
            idx = np.asarray(key.cpu().numpy() if isinstance(key, Tensor) else key)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = idx.astype(np.int64).reshape(-1)
            if len(idx) and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"index out of range for {n} images")
            idx = np.where(idx < 0, idx + n, idx)
        unique, inverse = np.unique(idx, return_inverse=True)  # the reader wants distinct rows
        x = self.dataset.read_images(unique)
        if len(unique) == len(idx) and np.array_equal(unique, idx):
            return x
        return x[torch.from_numpy(inverse.reshape(-1))]


def stream_loader(
    dataset: H5StreamDataset,
    batch_size: int,
    seed: int | None,
    drop_last: bool,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader giving the in-memory path's batches (``seed=None``: in order, unshuffled).

    Same batch size rule as the DataModule (at most the data set's size).
    """
    size = min(int(batch_size), len(dataset))
    if seed is None:
        batches = BatchSampler(range(len(dataset)), size, drop_last)
    else:
        batches = EpochSeededBatchSampler(len(dataset), size, seed, drop_last)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=identity_collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def channel_stats_streamed(
    path: str | os.PathLike, rows: np.ndarray, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of rows ``rows`` (increasing), read ``chunk`` rows at a time.

    The same float64 accumulation, block by block, as ``datamodule.channel_stats`` applied to
    the in-memory array of those rows, so the statistics (and the normalisation) agree exactly.
    """
    reader = H5RowReader(path)
    rows = np.asarray(rows, dtype=np.int64)
    blocks = (reader.read(rows[start : start + chunk]) for start in range(0, len(rows), chunk))
    return block_channel_stats(blocks, reader.shape[1])


def streaming_layout(path: str | os.PathLike) -> str:
    """``"raw"`` (row offsets known: fast random batches) or ``"chunked"`` (read via HDF5)."""
    return "raw" if H5RowReader(path).offsets is not None else "chunked"


def rechunk_for_streaming(
    src: str | os.PathLike, dst: str | os.PathLike, block: int = 1024, overwrite: bool = False
) -> Path:
    """Copy a domain file with one uncompressed chunk per image (atomic, ``block`` rows at a time).

    Labels, galaxy ids, parameter columns and attributes are kept.
    """
    meta = read_domain(src, load_images=False)
    reader = H5RowReader(src)
    n = reader.shape[0]
    with DomainWriter(
        dst,
        n=n,
        image_shape=reader.shape[1:],
        labelled=meta.labels is not None,
        attrs={k: v for k, v in meta.attrs.items() if k not in ("schema_version", "n_images")},
        param_names=list(meta.params),
        overwrite=overwrite,
        chunk_images=1,
        compression=None,
    ) as writer:
        for start in range(0, n, block):
            stop = min(n, start + block)
            writer.write(
                start,
                reader.read(np.arange(start, stop)),
                None if meta.labels is None else meta.labels[start:stop],
                meta.galaxy_id[start:stop],
                {k: v[start:stop] for k, v in meta.params.items()},
            )
    return Path(dst)


def image_bytes(paths: Sequence[str | os.PathLike]) -> int:
    """Decoded size of the ``images`` datasets of these files (from their shapes)."""
    total = 0
    for path in paths:
        reader = H5RowReader(path)
        total += reader.shape[0] * reader.row_bytes
    return total


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def use_out_of_core(
    setting: str | bool, paths: Sequence[str | os.PathLike], available: int | None = None
) -> bool:
    """Resolve ``data.out_of_core`` (``auto`` | ``true`` | ``false``) for these domain files.

    ``auto``: stream when the images exceed ``min(OUT_OF_CORE_AUTO_BYTES, available / 4)``
    (available memory from /proc/meminfo when not given).
    """
    if isinstance(setting, bool):
        return setting
    value = str(setting).strip().lower()
    if value in ("true", "false"):
        return value == "true"
    if value != "auto":
        raise ConfigError(f"data.out_of_core must be auto, true or false, got {setting!r}")
    available = _available_memory() if available is None else available
    limit = (
        OUT_OF_CORE_AUTO_BYTES if available is None else min(OUT_OF_CORE_AUTO_BYTES, available // 4)
    )
    return image_bytes(paths) > limit
