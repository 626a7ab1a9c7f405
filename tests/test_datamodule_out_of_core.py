"""``data.out_of_core``: the streamed DataModule against the in-memory one, batch for batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.data import _set_sampler_epoch

import galda.data.h5stream as h5stream
from galda.data.datamodule import SPLITS, ArrayDataset, DomainAdaptationDataModule
from galda.data.h5format import read_domain, write_domain
from galda.data.h5stream import H5StreamDataset, rechunk_for_streaming
from galda.errors import ConfigError

BATCH = 8  # 3 views of 40 galaxies: 84 training images, 10 batches and a dropped remainder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{layout: (source, target)}: galda's gzip chunks and the streaming layout (raw rows).

    Random pixels (distinct per image, so a reordered batch shows), 3 views per galaxy, a
    labelled target whose galaxy ids are partly its own.
    """
    tmp = tmp_path_factory.mktemp("ooc")
    rng = np.random.default_rng(4)
    ids = np.repeat(np.arange(40), 3)
    out = []
    for i, domain in enumerate(("source", "target")):
        images = rng.normal(i, 1 + i, (len(ids), 2, 9, 9)).astype(np.float32)
        labels = np.repeat(np.arange(40) % 2, 3)
        gid = ids if domain == "source" else ids + 20 * (ids >= 30)
        out.append(
            write_domain(tmp / f"{domain}.h5", images, labels, gid, attrs={"domain": domain})
        )
    raw = [rechunk_for_streaming(p, tmp / f"raw-{p.name}") for p in out]
    return {"gzip": tuple(out), "raw": tuple(raw)}


def _dm(paths, out_of_core, target_labels=False, **kw) -> DomainAdaptationDataModule:
    dm = DomainAdaptationDataModule(
        str(paths[0]), str(paths[1]), batch_size=BATCH, split_seed=2, out_of_core=out_of_core, **kw
    )
    dm.configure_training(target_images=True, target_labels=target_labels)
    dm.setup("fit")
    return dm


def _train_epochs(dm, seed: int, epochs: int) -> list[list]:
    """Every training batch of ``epochs`` epochs, the epoch set where Lightning sets it."""
    torch.manual_seed(seed)  # train_dataloader takes its shuffle seed from the torch seed
    combined = dm.train_dataloader()
    out = []
    for epoch in range(epochs):
        for loader in combined.flattened:
            _set_sampler_epoch(loader, epoch)
        out.append([batch for batch, _, _ in combined])
    return out


def _same(a, b) -> bool:
    """Equal structure, dtypes and values (bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return False


@pytest.mark.parametrize("layout", ["gzip", "raw"])
@pytest.mark.parametrize("target_labels", [False, True])
def test_streamed_and_in_memory_paths_are_identical(files, layout, target_labels):
    memory = _dm(files["gzip"], False, target_labels)
    stream = _dm(files[layout], True, target_labels)
    assert memory.streaming is False and stream.streaming is True
    assert isinstance(memory.datasets["source"]["train"], ArrayDataset)
    assert isinstance(stream.datasets["source"]["train"], H5StreamDataset)

    # everything the DataModule exposes (attrs: the copy keeps them)
    assert stream.split_sizes == memory.split_sizes
    assert stream.stats == memory.stats  # exact: the same float64 accumulation
    assert stream.image_shape == memory.image_shape == (2, 9, 9)
    assert stream.labelled == memory.labelled == {"source": True, "target": True}
    assert stream.attrs == memory.attrs
    assert stream.eval_domains == memory.eval_domains
    for d in ("source", "target"):
        assert np.array_equal(stream.galaxy_ids[d], memory.galaxy_ids[d])
    assert all(np.array_equal(stream.split_ids[s], memory.split_ids[s]) for s in SPLITS)

    # training: two epochs of paired batches, identical for a seed, and different per epoch
    want, got = _train_epochs(memory, 11, 2), _train_epochs(stream, 11, 2)
    n_train = memory.split_sizes["source"]["train"]
    assert n_train % BATCH and len(want[0]) == n_train // BATCH >= 10  # a remainder is dropped
    for epoch in range(2):
        assert len(got[epoch]) == len(want[epoch])
        for g, w in zip(got[epoch], want[epoch]):
            assert _same(g, w)
    source, target = want[0][0]["source"], want[0][0]["target"]
    assert isinstance(source, tuple) and len(source) == 2 and source[0].shape == (BATCH, 2, 9, 9)
    assert isinstance(target, tuple) if target_labels else isinstance(target, torch.Tensor)
    assert not torch.equal(want[0][0]["source"][0], want[1][0]["source"][0])  # epochs differ
    assert not _same(_train_epochs(stream, 12, 1)[0][0], got[0][0])  # another seed differs

    # evaluation: the {image, index, label} batches of both domains, in file order
    for stage in ("val_dataloader", "test_dataloader"):
        loaders_m, loaders_s = getattr(memory, stage)(), getattr(stream, stage)()
        assert loaders_m.keys() == loaders_s.keys() == {"source", "target"}
        for d in loaders_m:
            m, s = list(loaders_m[d]), list(loaders_s[d])
            assert len(m) == len(s) >= 1
            assert all(_same(a, b) for a, b in zip(s, m))
            assert set(m[0]) == {"image", "index", "label"}


def test_normalisation_uses_training_rows_only(files):
    dm = _dm(files["raw"], True)
    for d, path in zip(("source", "target"), files["raw"]):
        data = read_domain(path)
        train = data.images[np.isin(data.galaxy_id, dm.split_ids["train"])].astype(np.float64)
        assert np.allclose(dm.stats[d]["mean"], train.mean(axis=(0, 2, 3)), rtol=1e-12)
        assert np.allclose(dm.stats[d]["std"], train.std(axis=(0, 2, 3)), rtol=1e-9)
        everything = data.images.astype(np.float64).mean(axis=(0, 2, 3))
        assert not np.allclose(dm.stats[d]["mean"], everything, rtol=1e-9)


def test_target_labels_stay_out_of_training(files):
    dm = _dm(files["raw"], True)
    assert dm.datasets["target"]["train"].labels is None
    assert dm.datasets["target"]["val"].labels is not None  # evaluation keeps them
    batch = next(iter(dm.train_dataloader()))[0]
    assert isinstance(batch["target"], torch.Tensor)


def test_streamed_images_index_like_the_tensor(files):
    memory, stream = _dm(files["gzip"], False), _dm(files["raw"], True)
    for split in SPLITS:
        want, got = memory.datasets["target"][split].images, stream.datasets["target"][split].images
        assert len(got) == len(want) and got.shape == want.shape
        n = len(want)
        picks = [
            0,
            -1,
            slice(None),
            slice(1, None, 3),
            np.array([n - 1, 0, 2, 0]),
            want[:, 0, 0, 0] > 0,
        ]
        for key in picks:
            assert torch.equal(got[key], want[key]), key
        assert torch.equal(got[torch.tensor([2, 1])], want[torch.tensor([2, 1])])
        with pytest.raises(IndexError):
            got[n]
    assert torch.equal(
        stream.datasets["source"]["test"].rows, memory.datasets["source"]["test"].rows
    )


def test_auto_streams_above_the_threshold(files, monkeypatch):
    assert _dm(files["raw"], "auto").streaming is False  # a few KiB: in memory
    monkeypatch.setattr(h5stream, "OUT_OF_CORE_AUTO_BYTES", 1024)
    dm = _dm(files["raw"], "auto")
    assert dm.streaming is True
    assert isinstance(dm.datasets["target"]["train"], H5StreamDataset)
    assert _dm(files["raw"], "false").streaming is False  # forced, whatever the size


def test_streaming_with_on_device_is_refused(files, monkeypatch):
    dm = DomainAdaptationDataModule(*map(str, files["raw"]), out_of_core=True, on_device=True)
    with pytest.raises(ConfigError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "\n" not in message
    assert "data.out_of_core=true" in message and "data.on_device=true" in message
    assert "set data.on_device=false" in message and not dm.datasets
    monkeypatch.setattr(h5stream, "OUT_OF_CORE_AUTO_BYTES", 1024)
    dm = DomainAdaptationDataModule(*map(str, files["raw"]), on_device=True)
    with pytest.raises(ConfigError, match=r"data.out_of_core=auto \(the images take"):
        dm.resolve_out_of_core()
    with pytest.raises(ConfigError, match="data.out_of_core must be auto, true or false"):
        DomainAdaptationDataModule(*map(str, files["raw"]), out_of_core="sometimes")


def test_train_out_of_core_matches_in_memory(compose_cfg, files, tmp_path):
    """Two one-epoch runs, streamed and in memory: the same results to the last bit."""
    from galda.train import train

    results = {}
    for ooc in ("true", "false"):
        cfg = compose_cfg(
            "data=tiny",
            "model=tiny",
            "method=dann",
            "logger=none",
            "data.simulate=null",
            f"data.source_path={files['raw'][0]}",
            f"data.target_path={files['raw'][1]}",
            "model.net.in_channels=2",
            "trainer.max_epochs=1",
            f"data.out_of_core={ooc}",
            run_dir=tmp_path / ooc,
        )
        train(cfg)
        results[ooc] = json.loads((tmp_path / ooc / "results.json").read_text())
    streamed, memory = results["true"], results["false"]
    assert streamed["status"] == "complete" and streamed["config"]["data"]["out_of_core"] is True
    assert streamed["split_sizes"] == memory["split_sizes"]
    assert streamed["normalisation"] == memory["normalisation"]
    metrics = [k for k in memory if k.startswith("test/")]
    assert metrics and all(streamed[k] == memory[k] for k in metrics)
    assert streamed["validation"] == memory["validation"]


def test_adabn_reads_streamed_target_images(compose_cfg, files, tmp_path):
    """bnmix re-estimates target statistics from the whole target training split."""
    from galda.train import train

    cfg = compose_cfg(
        "data=tiny",
        "model=tiny",
        "method=bnmix",
        "logger=none",
        "data.simulate=null",
        f"data.source_path={files['raw'][0]}",
        f"data.target_path={files['raw'][1]}",
        "model.net.in_channels=2",
        "trainer.fast_dev_run=true",
        "data.out_of_core=true",
        run_dir=tmp_path / "run",
    )
    results = train(cfg)
    assert results["status"] == "smoke" and 0 <= results["test/target/acc"] <= 1
    assert (tmp_path / "run" / "results.json").exists()
