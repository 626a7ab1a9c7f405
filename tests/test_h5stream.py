"""Out-of-core batches (galda.data.h5stream) against the in-memory DataModule path."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from galda.data.datamodule import (
    DOMAINS,
    SPLITS,
    DomainAdaptationDataModule,
    channel_stats,
    identity_collate,
)
from galda.data.h5format import read_domain, write_domain
from galda.data.h5stream import (
    OUT_OF_CORE_AUTO_BYTES,
    H5RowReader,
    H5StreamDataset,
    channel_stats_streamed,
    image_bytes,
    rechunk_for_streaming,
    stream_loader,
    streaming_layout,
    use_out_of_core,
)
from galda.errors import GaldaError

N = 150  # images per domain: 104 training images = 14 batches of 7 and a dropped remainder
BATCH = 7


def _contiguous_copy(src, dst):
    """The same domain file with its images stored contiguously (no chunks, no filters)."""
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        for key in fin:
            if key != "images":
                fin.copy(key, fout)
        fout.create_dataset("images", data=fin["images"][()])
        fout.attrs.update(fin.attrs)
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{layout: (source, target)}: galda's default gzip chunks, per-image raw, contiguous."""
    tmp = tmp_path_factory.mktemp("h5stream")
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(500, 500 + N))
    out = {"gzip": []}
    for i, domain in enumerate(DOMAINS):
        images = rng.normal(i, 1 + i, (N, 3, 11, 11)).astype(np.float32)
        labels = rng.integers(0, 2, N) if domain == "source" else None
        out["gzip"].append(
            write_domain(tmp / f"{domain}.h5", images, labels, ids, attrs={"domain": domain})
        )
    out["raw"] = [rechunk_for_streaming(p, tmp / f"raw-{p.name}") for p in out["gzip"]]
    out["contiguous"] = [_contiguous_copy(p, tmp / f"cont-{p.name}") for p in out["gzip"]]
    return out


def _datamodule(src, tgt, batch_size=8):
    dm = DomainAdaptationDataModule(str(src), str(tgt), batch_size=batch_size, split_seed=3)
    dm.configure_training(target_images=True, target_labels=False)
    dm.setup("fit")
    return dm


def _rows(dm) -> dict[str, dict[str, np.ndarray]]:
    """File rows of every domain and split: the evaluation splits carry theirs; training gets
    the rest (the split assigns every galaxy, hence every image, to exactly one split)."""
    out = {}
    for d in DOMAINS:
        held = {s: dm.datasets[d][s].rows.numpy() for s in ("val", "test")}
        n = len(read_domain(dm.paths[d], load_images=False).galaxy_id)
        train = np.setdiff1d(np.arange(n), np.concatenate(list(held.values())))
        out[d] = {"train": train, **held}
    return out


def _stream_dataset(dm, rows, path, domain, split):
    labels = dm.datasets[domain][split].labels is not None
    stats = dm.stats[domain]
    return H5StreamDataset(
        path,
        rows[domain][split],
        stats["mean"],
        stats["std"],
        labels=labels,
        evaluation=split != "train",
    )


def test_layouts_are_detected(files):
    assert streaming_layout(files["gzip"][0]) == "chunked"
    assert streaming_layout(files["raw"][0]) == "raw"
    assert streaming_layout(files["contiguous"][0]) == "raw"
    assert image_bytes(files["raw"]) == 2 * N * 3 * 11 * 11 * 4


@pytest.mark.parametrize("layout", ["gzip", "raw", "contiguous"])
def test_reader_returns_the_rows_asked_for(files, layout):
    rows = np.array([0, 1, 2, 7, 63, 64, 65, 100, N - 1])
    reference = read_domain(files["gzip"][0]).images[rows]
    got = H5RowReader(files[layout][0]).read(rows)
    assert got.dtype == np.float32 and np.array_equal(got, reference)
    with pytest.raises(ValueError, match="increasing"):
        H5RowReader(files[layout][0]).read(np.array([5, 3]))


@pytest.mark.parametrize("layout", ["gzip", "raw", "contiguous"])
def test_training_batches_identical_to_in_memory_for_a_seed(files, layout):
    dm = _datamodule(*files["gzip"], batch_size=BATCH)
    rows = _rows(dm)
    torch.manual_seed(1234)  # the in-memory loaders take their seed from torch.initial_seed()
    seed = torch.initial_seed() % (2**31)
    memory = dm.train_dataloader()
    stream = {
        d: stream_loader(
            _stream_dataset(dm, rows, files[layout][i], d, "train"), BATCH, seed + i, drop_last=True
        )
        for i, d in enumerate(DOMAINS)
    }
    assert dm.split_sizes["source"]["train"] % BATCH != 0  # drop_last has a remainder to drop
    for epoch in (0, 1):
        for loader in memory.flattened:
            loader.sampler.set_epoch(epoch)
        for loader in stream.values():
            loader.batch_sampler.sampler.set_epoch(epoch)  # where Lightning sets it
        got_s, got_t = list(stream["source"]), list(stream["target"])
        want = [batch for batch, _, _ in memory]
        assert len(got_s) == len(got_t) == len(want) >= 10
        for (x_s, y_s), x_t, batch in zip(got_s, got_t, want):
            assert torch.equal(x_s, batch["source"][0]) and torch.equal(y_s, batch["source"][1])
            assert torch.equal(x_t, batch["target"])
    first = [torch.equal(a[0], b[0]) for a, b in zip(got_s, list(stream["source"]))]
    assert all(first)  # the same epoch again gives the same batches
    stream["source"].batch_sampler.sampler.set_epoch(0)
    assert not torch.equal(next(iter(stream["source"]))[0], got_s[0][0])  # epochs differ


def test_every_split_identical_and_stats_exact(files):
    dm = _datamodule(*files["gzip"])
    rows = _rows(dm)
    for i, domain in enumerate(DOMAINS):
        assert len(rows[domain]["train"]) == dm.split_sizes[domain]["train"]
        train = read_domain(files["gzip"][i]).images[rows[domain]["train"]]
        mean, std = channel_stats_streamed(files["raw"][i], rows[domain]["train"], chunk=16)
        want_mean, want_std = channel_stats(train, chunk=16)
        assert np.array_equal(mean, want_mean) and np.array_equal(std, want_std)
        assert np.allclose(mean, dm.stats[domain]["mean"], rtol=0, atol=0)
        for split in SPLITS:
            ds = _stream_dataset(dm, rows, files["raw"][i], domain, split)
            memory = dm.datasets[domain][split]
            got = list(stream_loader(ds, 8, None, drop_last=False))
            if split == "train":
                images = torch.cat([b[0] if isinstance(b, tuple) else b for b in got])
                assert torch.equal(images, memory.images)
                if memory.labels is not None:
                    assert torch.equal(torch.cat([b[1] for b in got]), memory.labels)
                continue
            want = list(DataLoader(memory, batch_size=8, collate_fn=identity_collate))
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert g.keys() == w.keys()
                assert all(torch.equal(g[k], w[k]) for k in g)


def test_worker_processes_read_the_same_batches(files):
    dm = _datamodule(*files["gzip"])
    rows = _rows(dm)
    ds = _stream_dataset(dm, rows, files["raw"][0], "source", "train")
    alone = [x for x, _ in stream_loader(ds, 8, 7, drop_last=True)]
    workers = [x for x, _ in stream_loader(ds, 8, 7, drop_last=True, num_workers=1)]
    assert len(alone) == len(workers) and all(torch.equal(a, b) for a, b in zip(alone, workers))


def test_rechunk_keeps_everything_but_the_layout(files):
    before, after = read_domain(files["gzip"][0]), read_domain(files["raw"][0])
    assert np.array_equal(before.images, after.images)
    assert np.array_equal(before.labels, after.labels)
    assert np.array_equal(before.galaxy_id, after.galaxy_id)
    assert after.attrs["domain"] == "source"
    with h5py.File(files["raw"][0], "r") as f:
        assert f["images"].chunks == (1, 3, 11, 11) and f["images"].compression is None


def test_out_of_core_switch(files):
    paths = files["raw"]
    size = image_bytes(paths)
    assert use_out_of_core(True, paths) and not use_out_of_core("false", paths)
    assert not use_out_of_core("auto", paths, available=8 * size)  # small: in memory
    assert use_out_of_core("auto", paths, available=2 * size)  # over a quarter of memory
    assert OUT_OF_CORE_AUTO_BYTES == 4 * 2**30
    with pytest.raises(GaldaError, match="data.out_of_core"):
        use_out_of_core("sometimes", paths)


def test_ingest_stream_command_writes_the_fast_layout(files, tmp_path, capsys):
    from galda.ingest.cli import main

    out = tmp_path / "stream.h5"
    assert main(["stream", str(files["gzip"][1]), "--out", str(out)]) == 0
    assert streaming_layout(out) == "raw"
    before, after = read_domain(files["gzip"][1]), read_domain(out)
    assert np.array_equal(before.images, after.images) and after.labels is None
    assert np.array_equal(before.galaxy_id, after.galaxy_id)
    assert "wrote" in capsys.readouterr().err
    # refusals: one line naming the file, exit 2, the existing file untouched
    stamp = out.stat().st_mtime_ns
    assert main(["stream", str(files["gzip"][0]), "--out", str(out)]) == 2
    assert f"{out}: already exists; add --force" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == stamp
    assert main(["stream", str(out), "--out", str(out), "--force"]) == 2
    assert "--out is the input file" in capsys.readouterr().err
    not_galda = tmp_path / "other.h5"
    with h5py.File(not_galda, "w") as f:
        f["x"] = np.zeros(3)
    assert main(["stream", str(not_galda), "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(not_galda) in err[0] and not (tmp_path / "x.h5").exists()
    assert main(["stream", str(files["gzip"][0]), "--out", str(out), "--force", "-q"]) == 0
    assert read_domain(out).labels is not None
