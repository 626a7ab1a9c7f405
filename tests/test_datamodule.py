import numpy as np
import pytest
import torch

from galda.data import DataMissingError, DomainAdaptationDataModule, read_domain, split_galaxies
from galda.data.datamodule import channel_stats
from galda.errors import GaldaError
from tests.conftest import make_domain_files


def _dm(folder, **kw):
    src, tgt = make_domain_files(
        folder,
        **{k: kw.pop(k) for k in list(kw) if k in ("n_galaxies", "views", "labelled_target")},
    )
    dm = DomainAdaptationDataModule(str(src), str(tgt), name="synthetic", batch_size=8, **kw)
    dm.setup("fit")
    return dm, src, tgt


def test_split_is_by_galaxy_and_shared_by_domains(tmp_path):
    dm, src, _ = _dm(tmp_path, n_galaxies=50, views=3)
    data = read_domain(src)
    ids = data.galaxy_id
    split = dm.split_ids
    sets = [set(split[s].tolist()) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(np.unique(ids).tolist())
    # stratified: 70/10/20 of the 25 mergers and of the 25 non-mergers
    assert [len(s) for s in sets] == [36, 4, 10]
    for s in sets:
        labels = {int(data.labels[ids == g][0]) for g in s}
        assert labels == {0, 1}
    # every view of a galaxy is on one side, and both domains use the same split
    assert (
        dm.split_sizes["source"]
        == dm.split_sizes["target"]
        == {"train": 108, "val": 12, "test": 30}
    )


def test_split_ignores_the_training_seed():
    ids = np.arange(200)
    torch.manual_seed(1)
    a = split_galaxies(ids, (0.7, 0.1, 0.2), seed=0)
    torch.manual_seed(2)
    np.random.seed(2)
    b = split_galaxies(ids, (0.7, 0.1, 0.2), seed=0)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    c = split_galaxies(ids, (0.7, 0.1, 0.2), seed=1)
    assert not np.array_equal(a["train"], c["train"])


def test_normalisation_uses_training_images_only(tmp_path):
    dm, src, tgt = _dm(tmp_path, n_galaxies=30, views=1)
    for domain, path in (("source", src), ("target", tgt)):
        data = read_domain(path)
        train_ids = dm.split_ids["train"]
        mean, std = channel_stats(data.images[np.isin(data.galaxy_id, train_ids)])
        np.testing.assert_allclose(dm.stats[domain]["mean"], mean)
        np.testing.assert_allclose(dm.stats[domain]["std"], std)
        train = dm.datasets[domain]["train"].images
        np.testing.assert_allclose(train.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-4)
        np.testing.assert_allclose(train.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, atol=1e-3)


def test_training_batches_hold_no_target_labels(tmp_path):
    dm, _, _ = _dm(tmp_path)
    assert dm.datasets["target"]["train"].labels is None
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    x_s, y_s = batch["source"]
    assert x_s.shape == (8, 3, 75, 75) and y_s.shape == (8,)
    assert isinstance(batch["target"], torch.Tensor) and batch["target"].shape == (8, 3, 75, 75)
    assert set(dm.val_dataloader()) == {"source", "target"}
    batch = next(iter(dm.test_dataloader()["target"]))
    assert batch["label"].dtype == torch.int64 and batch["image"].shape[1:] == (3, 75, 75)
    # rows point back into the file: same galaxy ids, same (normalised) pixels
    data = read_domain(dm.paths["target"])
    rows = batch["index"].numpy()
    test_ids = dm.split_ids["test"]
    assert np.isin(data.galaxy_id[rows], test_ids).all()
    mean = np.asarray(dm.stats["target"]["mean"])[:, None, None]
    std = np.asarray(dm.stats["target"]["std"])[:, None, None]
    np.testing.assert_allclose(batch["image"].numpy(), (data.images[rows] - mean) / std, atol=1e-5)


def test_oracle_flag_exposes_target_labels(tmp_path):
    src, tgt = make_domain_files(tmp_path)
    dm = DomainAdaptationDataModule(str(src), str(tgt), name="synthetic", batch_size=8)
    dm.configure_training(target_images=True, target_labels=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    assert isinstance(batch["target"], (tuple, list)) and len(batch["target"]) == 2


def test_unlabelled_target_is_allowed(tmp_path):
    dm, _, _ = _dm(tmp_path, labelled_target=False)
    assert dm.eval_domains == ["source"] and dm.labelled == {"source": True, "target": False}
    # unlabelled target images are still evaluated (label-free validators, predictions)
    assert list(dm.test_dataloader()) == ["source", "target"]
    assert "label" not in next(iter(dm.val_dataloader()["target"]))


def test_baseline_loader_yields_no_target_batch(tmp_path):
    src, tgt = make_domain_files(tmp_path)
    dm = DomainAdaptationDataModule(str(src), str(tgt), name="synthetic", batch_size=8)
    dm.configure_training(target_images=False, target_labels=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    assert set(batch) == {"source"}


def test_missing_imported_file_names_file_and_hint(tmp_path):
    dm = DomainAdaptationDataModule(
        str(tmp_path / "simsim" / "source.h5"),
        str(tmp_path / "simsim" / "target.h5"),
        name="simsim",
        missing_hint="Run: python -m galda.ingest deepmerge ...",
    )
    with pytest.raises(DataMissingError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "source.h5" in message and str(tmp_path / "simsim") in message
    assert "galda.ingest" in message


def test_shape_mismatch_between_domains_is_refused(tmp_path):
    from galda.data.h5format import write_domain

    src, _ = make_domain_files(tmp_path, n_galaxies=10, views=1)
    write_domain(
        tmp_path / "target.h5",
        np.zeros((10, 1, 75, 75), np.float32),
        None,
        np.arange(10),
        attrs={"domain": "target"},
        overwrite=True,
    )
    dm = DomainAdaptationDataModule(str(src), str(tmp_path / "target.h5"))
    with pytest.raises(GaldaError, match="shapes differ"):
        dm.setup("fit")
