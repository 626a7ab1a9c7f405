"""Paired source/target data for unsupervised domain adaptation.

Data flow: domain HDF5 files (``galda.data.h5format``) → split by galaxy → per-domain
normalisation with training-split statistics → in-memory tensors → batch-at-a-time loaders.
Sets too large for memory are streamed instead (``data.out_of_core``; ``galda.data.h5stream``):
the same split, statistics, seeded batches and batch contents, read from the files as drawn.

Training batches are ``{"source": (x, y), "target": x}``: the target training set is built
without labels, so they cannot reach a training step (unless the method declares
``uses_target_labels``, which only the explicitly labelled ceiling rows do). Evaluation batches
are ``{"image", "index"[, "label"]}`` with the row index in the domain file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from galda.data.h5format import DataFormatError, DomainData, read_domain
from galda.errors import ConfigError, GaldaError
from galda.memory_format import channels_last_enabled

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DOMAINS = ("source", "target")


class DataMissingError(GaldaError):
    """A configured data file does not exist and cannot be made automatically."""


class ArrayDataset(Dataset):
    """Images (and optionally labels and file row indices) held as tensors.

    Without ``rows`` an item is ``x`` or ``(x, y)`` (training); with ``rows`` it is a dict
    ``{"image", "index"[, "label"]}`` (evaluation). ``__getitems__`` returns a whole batch with one
    indexing operation, so the DataLoader does no per-sample collation (:func:`identity_collate`).
    """

    def __init__(
        self, images: Tensor, labels: Tensor | None = None, rows: Tensor | None = None
    ) -> None:
        self.images = images
        self.labels = labels
        self.rows = rows

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _take(self, idx: Any) -> Any:
        if self.rows is not None:
            item = {"image": self.images[idx], "index": self.rows[idx]}
            if self.labels is not None:
                item["label"] = self.labels[idx]
            return item
        if self.labels is None:
            return self.images[idx]
        return self.images[idx], self.labels[idx]

    def __getitem__(self, index: int) -> Any:
        return self._take(index)

    def __getitems__(self, indices: Sequence[int]) -> Any:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.images.device.type != "cpu":
            idx = idx.to(self.images.device, non_blocking=True)
        return self._take(idx)


class EpochSeededSampler(torch.utils.data.Sampler[int]):
    """A random permutation per epoch drawn from ``(seed, epoch)`` only.

    Lightning calls ``set_epoch`` every epoch, so a run resumed from a checkpoint sees exactly
    the batches an uninterrupted run would have seen (the global RNG plays no part).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def identity_collate(batch: Any) -> Any:
    """Collate for datasets whose ``__getitems__`` already returns a batch."""
    return batch


def split_galaxies(
    galaxy_ids: np.ndarray,
    fractions: Sequence[float],
    seed: int,
    labels: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Assign each distinct galaxy id to train / val / test, stratified by class.

    All images of one galaxy land on one side, and every domain that shares ids gets the same
    assignment. With ``labels`` (one per image; a galaxy's class is that of its first image, −1
    where unknown) the galaxies of each class are split separately with the same fractions, so the
    class balance is the same in every split. The permutation depends only on the sorted ids,
    their classes and ``seed``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise GaldaError(
            f"data.split_fractions must be three non-negative numbers summing to 1, got {list(fractions)}"
        )
    unique, first = np.unique(galaxy_ids, return_index=True)
    classes = np.asarray(labels)[first] if labels is not None else np.zeros(len(unique), int)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(classes):
        members = unique[classes == c]
        shuffled = members[rng.permutation(len(members))]
        n_train = int(round(fractions[0] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        parts["train"].append(shuffled[:n_train])
        parts["val"].append(shuffled[n_train : n_train + n_val])
        parts["test"].append(shuffled[n_train + n_val :])
    return {s: np.sort(np.concatenate(parts[s])) for s in SPLITS}


def resolve_out_of_core(
    setting: str | bool, paths: Sequence[str | Path], on_device: bool = False
) -> bool:
    """Whether ``data.out_of_core`` (``auto`` | ``true`` | ``false``) streams these files.

    ``auto`` streams above ``galda.data.h5stream.use_out_of_core``'s threshold (4 GiB of decoded
    images, or a quarter of the available memory if less). Streaming cannot be combined with
    ``data.on_device=true`` (the data set resident on the accelerator): a ConfigError says so.
    """
    from galda.data.h5stream import OUT_OF_CORE_AUTO_BYTES, image_bytes, use_out_of_core

    streaming = use_out_of_core(setting, paths)
    if streaming and on_device:
        why = str(setting).lower()
        if why == "auto":
            why = (
                f"auto (the images take {image_bytes(paths) / 2**30:.2f} GiB, over "
                f"min({OUT_OF_CORE_AUTO_BYTES / 2**30:g} GiB, a quarter of available memory))"
            )
        raise ConfigError(
            f"data.out_of_core={why} streams the images from disk but data.on_device=true needs "
            "them all on the accelerator; set data.on_device=false to stream, or "
            "data.out_of_core=false to load them (if they fit)"
        )
    return streaming


def block_channel_stats(
    blocks: Iterable[np.ndarray], channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of image blocks (N, C, H, W), accumulated in float64
    block by block: std = √(E[x²] − E[x]²) (a zero std becomes 1, so normalising is safe)."""
    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    for block in blocks:
        block = block.astype(np.float64)
        total += block.sum(axis=(0, 2, 3))
        total_sq += (block**2).sum(axis=(0, 2, 3))
        count += block.shape[0] * block.shape[2] * block.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of in-memory images (:func:`block_channel_stats`)."""
    blocks = (images[start : start + chunk] for start in range(0, len(images), chunk))
    return block_channel_stats(blocks, images.shape[1])


class DomainAdaptationDataModule(pl.LightningDataModule):
    """Source (labelled) and target (unlabelled in training) domains, split by galaxy.

    Args:
        source_path, target_path: domain HDF5 files (``galda.data.h5format``).
        name: data-set name used in results and folder names.
        batch_size: images per domain per step (the paper: 128 + 128).
        split_seed: seed of the galaxy split; independent of the training seed.
        split_fractions: train / val / test fractions of galaxies (paper: 0.7 / 0.1 / 0.2).
        num_workers: DataLoader worker processes (0 is fastest for in-memory tensors).
        on_device: move the normalised tensors to the accelerator once (GPU runs).
        channels_last: ``auto`` | ``true`` | ``false``: store images channels-last
            (:mod:`galda.memory_format`; ``auto``: on when no GPU is present).
        out_of_core: ``auto`` | ``true`` | ``false``: stream batches from the files instead of
            holding the images (:func:`resolve_out_of_core`); batches, split, statistics and
            the attributes below are the same either way. ``streaming`` tells which was chosen.
        missing_hint: text shown when a file is missing (how to obtain and ingest it).

    ``train()`` calls :meth:`configure_training` with the method's declared needs before setup:
    which domains the training loader yields, and whether target labels go with them.
    """

    def __init__(
        self,
        source_path: str,
        target_path: str,
        name: str = "data",
        batch_size: int = 128,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
        num_workers: int = 0,
        on_device: bool = False,
        channels_last: bool | str = "auto",
        out_of_core: str | bool = "auto",
        missing_hint: str | None = None,
    ) -> None:
        super().__init__()
        self.paths = {"source": Path(source_path), "target": Path(target_path)}
        self.name = name
        self.batch_size = int(batch_size)
        self.split_seed = int(split_seed)
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.num_workers = int(num_workers)
        self.on_device = bool(on_device)
        self.channels_last = channels_last_enabled(channels_last)
        self.missing_hint = missing_hint
        if str(out_of_core).strip().lower() not in ("auto", "true", "false"):
            raise ConfigError(f"data.out_of_core must be auto, true or false, got {out_of_core!r}")
        self.out_of_core = out_of_core
        self.streaming: bool | None = None  # resolved at preflight or setup
        self.train_domains: tuple[str, ...] = DOMAINS
        self.target_labels_in_training = False
        self.datasets: dict[str, dict[str, Any]] = {}  # ArrayDataset or H5StreamDataset
        self.stats: dict[str, dict[str, list[float]]] = {}
        self.split_sizes: dict[str, dict[str, int]] = {}
        self.labelled: dict[str, bool] = {}
        self.attrs: dict[str, dict[str, Any]] = {}
        self.galaxy_ids: dict[str, np.ndarray] = {}
        self.image_shape: tuple[int, ...] = ()
        self.split_ids: dict[str, np.ndarray] = {}

    def configure_training(self, target_images: bool, target_labels: bool) -> None:
        """What the training loader yields: source only, or source and target (with labels)."""
        if self.datasets:
            raise RuntimeError("configure_training must be called before setup()")
        self.train_domains = DOMAINS if target_images or target_labels else ("source",)
        self.target_labels_in_training = bool(target_labels)

    # -- preparation ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Refuse missing files with the path and how to get them (simulated sets are made by
        the app before the DataModule is built: ``galda.provision``)."""
        missing = [p for p in self.paths.values() if not p.exists()]
        if missing:
            hint = f"\n{self.missing_hint.strip()}" if self.missing_hint else ""
            raise DataMissingError(
                f"data set '{self.name}': file not found: {missing[0]} "
                f"(looked in {missing[0].parent}; set paths.data_dir or GALDA_DATA_DIR "
                f"to move the data directory){hint}"
            )

    def resolve_out_of_core(self) -> bool:
        """Stream or hold the images (decided once; needs the files to exist)."""
        if self.streaming is None:
            try:
                self.streaming = resolve_out_of_core(
                    self.out_of_core, [self.paths[d] for d in DOMAINS], self.on_device
                )
            except DataFormatError as err:
                raise GaldaError(str(err)) from err
        return self.streaming

    def _load(self, domain: str, images: bool = True) -> DomainData:
        try:
            return read_domain(self.paths[domain], load_images=images)
        except DataFormatError as err:
            raise GaldaError(str(err)) from err

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare_data()
        streaming = self.resolve_out_of_core()
        if streaming:
            self._warn_slow_layout()
        # streaming: everything but the images (whose shape is kept in an empty array)
        data = {d: self._load(d, images=not streaming) for d in DOMAINS}
        shapes = {d: data[d].images.shape[1:] for d in DOMAINS}
        if shapes["source"] != shapes["target"]:
            raise GaldaError(
                f"image shapes differ between domains: {self.paths['source']} has "
                f"{tuple(shapes['source'])}, {self.paths['target']} has {tuple(shapes['target'])}"
            )
        if data["source"].labels is None:
            raise GaldaError(f"{self.paths['source']}: the source domain must have labels")
        self.image_shape = tuple(int(v) for v in shapes["source"])
        ids = np.concatenate([data[d].galaxy_id for d in DOMAINS])
        # classes from the source labels only: target labels never shape the split
        classes = np.concatenate(
            [data["source"].labels, np.full(len(data["target"].galaxy_id), -1)]
        )
        order = np.argsort(ids, kind="stable")  # a galaxy's first image is a source one if any
        split = split_galaxies(ids[order], self.split_fractions, self.split_seed, classes[order])
        self.split_ids = split  # galaxy ids per split (shared by both domains)
        for domain in DOMAINS:
            self._setup_domain(domain, data[domain], split)
        log.info("Split by galaxy (split_seed=%d): %s", self.split_seed, self.split_sizes)
        log.info(
            "Images %s (data.out_of_core=%s)",
            "streamed" if streaming else "in memory",
            self.out_of_core,
        )

    def _warn_slow_layout(self) -> None:
        from galda.data.h5stream import streaming_layout

        for domain in DOMAINS:
            if streaming_layout(self.paths[domain]) != "raw":
                log.warning(
                    "%s: compressed chunks make random batches slow to stream (~250x); "
                    "`python -m galda.ingest stream FILE --out COPY` writes the fast layout",
                    self.paths[domain],
                )

    def _setup_domain(self, domain: str, dd: DomainData, split: dict[str, np.ndarray]) -> None:
        """Normalise with training-split statistics and build the three split datasets."""
        masks = {s: np.isin(dd.galaxy_id, split[s]) for s in SPLITS}
        if not masks["train"].any():
            raise GaldaError(f"{self.paths[domain]}: no images in the training split")
        if self.streaming:
            from galda.data.h5stream import channel_stats_streamed

            mean, std = channel_stats_streamed(self.paths[domain], np.flatnonzero(masks["train"]))
        else:
            mean, std = channel_stats(dd.images[masks["train"]])
        self.stats[domain] = {"mean": mean.tolist(), "std": std.tolist()}
        self.labelled[domain] = dd.labels is not None
        self.attrs[domain] = dict(dd.attrs)
        self.galaxy_ids[domain] = np.asarray(dd.galaxy_id)
        self.datasets[domain] = {}
        self.split_sizes[domain] = {}
        if self.streaming:
            self._stream_domain(domain, dd, masks, mean, std)
            return
        images = torch.from_numpy(dd.images)
        images = (images - torch.tensor(mean, dtype=torch.float32)[None, :, None, None]) / (
            torch.tensor(std, dtype=torch.float32)[None, :, None, None]
        )
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.from_numpy(dd.labels) if dd.labels is not None else None
        device = self._device()
        for s in SPLITS:
            idx = torch.from_numpy(np.flatnonzero(masks[s]))
            x = images[idx].to(device)
            y = labels[idx].to(device) if labels is not None else None
            if s == "train":
                if domain == "target" and not self.target_labels_in_training:
                    y = None  # target labels never reach training
                self.datasets[domain][s] = ArrayDataset(x, y)
            else:
                self.datasets[domain][s] = ArrayDataset(x, y, rows=idx.to(device))
            self.split_sizes[domain][s] = int(len(idx))

    def _stream_domain(
        self,
        domain: str,
        dd: DomainData,
        masks: dict[str, np.ndarray],
        mean: np.ndarray,
        std: np.ndarray,
    ) -> None:
        """The three split datasets, read from the file batch by batch (same items)."""
        from galda.data.h5stream import H5StreamDataset

        for s in SPLITS:
            rows = np.flatnonzero(masks[s])
            hide = s == "train" and domain == "target" and not self.target_labels_in_training
            labels = False if dd.labels is None or hide else dd.labels
            self.datasets[domain][s] = H5StreamDataset(
                self.paths[domain],
                rows,
                mean.tolist(),
                std.tolist(),
                labels=labels,
                channels_last=self.channels_last,
                evaluation=s != "train",
            )
            self.split_sizes[domain][s] = int(len(rows))

    def _device(self) -> torch.device:
        if not self.on_device:
            return torch.device("cpu")
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def eval_domains(self) -> list[str]:
        """Domains with labels in the evaluation splits, in loader order."""
        return [d for d in DOMAINS if self.labelled.get(d)]

    # -- loaders --------------------------------------------------------------------------
    def _loader(self, dataset: Any, drop_last: bool, shuffle_seed: int | None = None) -> DataLoader:
        if not isinstance(dataset, ArrayDataset):  # streamed: the same batches, drawn by batch
            from galda.data.h5stream import stream_loader

            return stream_loader(
                dataset, self.batch_size, shuffle_seed, drop_last, num_workers=self.num_workers
            )
        on_cpu = dataset.images.device.type == "cpu"
        workers = self.num_workers if on_cpu else 0
        sampler = (
            EpochSeededSampler(len(dataset), shuffle_seed) if shuffle_seed is not None else None
        )
        return DataLoader(
            dataset,
            batch_size=min(self.batch_size, len(dataset)),
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=identity_collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=on_cpu and torch.cuda.is_available(),
        )

    def train_dataloader(self) -> CombinedLoader:
        # Shuffling follows the training seed (set by seed_everything), one stream per domain.
        seed = torch.initial_seed() % (2**31)
        loaders = {
            d: self._loader(self.datasets[d]["train"], True, shuffle_seed=seed + DOMAINS.index(d))
            for d in self.train_domains
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> dict[str, DataLoader]:
        # Unlabelled target images are evaluated too: label-free validators read them.
        return {d: self._loader(self.datasets[d]["val"], False) for d in DOMAINS}

    def test_dataloader(self) -> dict[str, DataLoader]:
        return {d: self._loader(self.datasets[d]["test"], False) for d in DOMAINS}

    # Normalisation statistics travel with checkpoints (also in the module's buffers).
    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats, "split_seed": self.split_seed, "name": self.name}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stats = state_dict.get("stats", self.stats)
