"""galda.load_model and python -m galda.predict: raw images in, a catalogue out.

Fast tests use a hand-made checkpoint in the documented layout (network config and image shape in
``hyper_parameters``, ``normaliser.mean``/``std`` buffers, an optional ``temperature``); the slow
acceptance tests train tiny models and compare the catalogue with the run's own test predictions.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from galda.errors import GaldaError
from galda.inference import MergerPredictor, load_model
from galda.predict.cli import main as predict_main

SHAPE = (3, 20, 20)
NET_CFG = {"_target_": "galda.models.TinyNet", "in_channels": 3}
MEAN = np.array([[0.5, 1.0, 1.5], [2.0, 3.0, 4.0]])  # rows: source, target
STD = np.array([[0.2, 0.4, 0.6], [1.5, 2.0, 2.5]])


def make_checkpoint(
    path: Path, seed: int = 0, temperature: float | None = None, shape=SHAPE
) -> tuple[Path, torch.nn.Module]:
    """A checkpoint laid out as MergerClassifier saves one (net config in the hyper-parameters,
    normalisation buffers and the input's shape and bands in the state dict)."""
    from galda.models import TinyNet

    torch.manual_seed(seed)
    net = TinyNet(in_channels=shape[0]).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net.features[1].running_mean.uniform_(-0.3, 0.3)
        net.features[1].running_var.uniform_(0.5, 2.0)
    state = {f"net.{k}": v.clone() for k, v in net.state_dict().items()}
    state["normaliser.mean"] = torch.tensor(MEAN[:, : shape[0]], dtype=torch.float32)
    state["normaliser.std"] = torch.tensor(STD[:, : shape[0]], dtype=torch.float32)
    state["normaliser._extra_state"] = {
        "image_shape": list(shape),
        "bands": ["g", "r", "i"][: shape[0]],
    }
    state["discriminator.0.weight"] = torch.zeros(2, 2)  # method-owned weights are ignored
    checkpoint = {
        "state_dict": state,
        "hyper_parameters": {"net": {**NET_CFG, "in_channels": shape[0]}, "transfer_weight": 1.0},
        "epoch": 1,
    }
    if temperature is not None:
        checkpoint["temperature"] = temperature
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path, net


def make_run(folder: Path, seed: int = 0, temperature: float | None = None) -> torch.nn.Module:
    ckpt, net = make_checkpoint(folder / "checkpoints" / "epoch1.ckpt", seed, temperature)
    results = {
        "status": "complete",
        "method": "dann",
        "seed": seed,
        "git_commit": "abc123",
        "checkpoint": str(ckpt.resolve()),
    }
    (folder / "results.json").write_text(json.dumps(results))
    return net


def reference_probs(net, x: np.ndarray, domain: int = 1, t: float = 1.0) -> np.ndarray:
    """P(merger) written out: normalise with the domain's stats, net, logits / T, softmax."""
    xt = torch.from_numpy(x)
    mean = torch.tensor(MEAN[domain], dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(STD[domain], dtype=torch.float32)[None, :, None, None]
    with torch.no_grad():
        logits = net((xt - mean) / std)[1].double() / t
    return torch.softmax(logits, 1)[:, 1].numpy()


def raw_images(n: int, seed: int = 0, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (3.0 + 2.0 * rng.standard_normal((n, *shape))).astype(np.float32)


def read_table(path: Path):
    from astropy.table import Table

    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(path.suffix)
    return Table.read(path, format=fmt) if fmt else Table.read(path)


def write_stamps(folder: Path, images: np.ndarray, ids=None, sky=None, wcs=False) -> list[Path]:
    from astropy.io import fits

    folder.mkdir(parents=True)
    paths = []
    for i, img in enumerate(images):
        hdr = fits.Header()
        if ids is not None:
            hdr["OBJID"] = int(ids[i])
        if sky is not None and not wcs:
            hdr["RA"], hdr["DEC"] = float(sky[i][0]), float(sky[i][1])
        if sky is not None and wcs:
            h, w = img.shape[1:]
            hdr.update(
                {
                    "CTYPE1": "RA---TAN",
                    "CTYPE2": "DEC--TAN",
                    "CUNIT1": "deg",
                    "CUNIT2": "deg",
                    "CRPIX1": (w + 1) / 2,
                    "CRPIX2": (h + 1) / 2,
                    "CRVAL1": float(sky[i][0]),
                    "CRVAL2": float(sky[i][1]),
                    "CDELT1": -1e-4,
                    "CDELT2": 1e-4,
                }
            )
        path = folder / f"stamp_{i:04d}.fits"
        fits.PrimaryHDU(img, header=hdr).writeto(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------


def test_load_model_normalises_raw_images_per_domain_and_applies_temperature(tmp_path):
    ckpt, net = make_checkpoint(tmp_path / "m.ckpt", temperature=2.0)
    x = raw_images(9)
    model = load_model(ckpt)
    assert isinstance(model, MergerPredictor) and not model.training
    assert model.calibrated and model.temperature == 2.0 and model.image_shape == SHAPE
    assert model.bands == ["g", "r", "i"]
    with torch.no_grad():
        p = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(p, reference_probs(net, x, 1, 2.0), atol=1e-6)
    raw = load_model(ckpt, calibrated=False)
    assert raw.temperature == 1.0 and not raw.calibrated
    with torch.no_grad():
        np.testing.assert_allclose(
            raw(torch.from_numpy(x)).numpy(), reference_probs(net, x, 1), atol=1e-6
        )
        src = load_model(ckpt, domain="source", calibrated=False)(torch.from_numpy(x)).numpy()
        logits = model.logits(torch.from_numpy(x))
    np.testing.assert_allclose(src, reference_probs(net, x, 0), atol=1e-6)
    assert logits.shape == (9, 2)
    with pytest.raises(GaldaError, match="domain"):
        load_model(ckpt, domain="test")


def test_galda_load_model_is_the_package_entry_point(tmp_path):
    import galda

    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    assert galda.load_model is load_model
    assert isinstance(galda.load_model(ckpt), MergerPredictor)


def test_load_model_run_folder_moved_and_sweep_folder(tmp_path):
    net = make_run(tmp_path / "sweep" / "seed=1", seed=1)
    make_run(tmp_path / "sweep" / "seed=2", seed=2)
    (tmp_path / "sweep" / "seed=3").mkdir()  # an unfinished job: no results.json
    failed = tmp_path / "sweep" / "seed=4"
    failed.mkdir()
    (failed / "results.json").write_text(json.dumps({"status": "failed", "checkpoint": None}))
    moved = tmp_path / "moved"
    (tmp_path / "sweep").rename(moved)  # results.json names absolute paths that no longer exist
    model = load_model(moved / "seed=1")
    assert model.info["seed"] == 1 and model.info["git_commit"] == "abc123"
    x = raw_images(4)
    with torch.no_grad():
        np.testing.assert_allclose(
            model(torch.from_numpy(x)).numpy(), reference_probs(net, x), atol=1e-6
        )
    members = load_model(moved)
    assert isinstance(members, list) and [m.info["seed"] for m in members] == [1, 2]
    with pytest.raises(GaldaError, match="status is 'failed'"):
        load_model(moved / "seed=4")
    with pytest.raises(GaldaError, match="not found"):
        load_model(tmp_path / "nothing")
    with pytest.raises(GaldaError, match="no results.json"):
        load_model(moved / "seed=3")


def test_load_model_refuses_a_checkpoint_without_its_network(tmp_path):
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "old.ckpt")
    with pytest.raises(GaldaError, match="network config"):
        load_model(tmp_path / "old.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(GaldaError, match="not a readable checkpoint"):
        load_model(tmp_path / "junk.ckpt")
    import functools

    torch.save({"state_dict": {}, "callback": functools.partial(print)}, tmp_path / "obj.ckpt")
    with pytest.raises(GaldaError, match="Python objects"):  # never unpickled
        load_model(tmp_path / "obj.ckpt")


# --------------------------------------------------------------------------------------------
# predict: inputs, ids, sky positions, formats
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".ecsv", ".fits"])
def test_predict_npy_matches_the_model_row_by_row(tmp_path, suffix):
    ckpt, net = make_checkpoint(tmp_path / "m.ckpt", temperature=1.5)
    x = raw_images(37)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / f"cat{suffix}"
    rc = predict_main(
        [
            str(ckpt),
            str(tmp_path / "x.npy"),
            "--out",
            str(out),
            "--batch-size",
            "8",
            "-q",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    cat = read_table(out)
    assert list(cat["row"]) == list(range(37)) and set(cat["file"]) == {"x.npy"}
    expected = reference_probs(net, x, t=1.5)
    np.testing.assert_allclose(np.asarray(cat["p_merger"], float), expected, atol=1e-6)
    assert list(cat["predicted_class"]) == list((expected > 0.5).astype(int))
    assert "object_id" not in cat.colnames and "n_members" not in cat.colnames
    if suffix != ".csv":
        assert cat.meta["TEMPER"] == pytest.approx(1.5) and cat.meta["CALIB"]
        assert cat.meta["MODEL"] == str(ckpt) and cat.meta["DOMAIN"] == "target"
        assert json.loads(cat.meta["NORMMEAN"]) == pytest.approx(MEAN[1].tolist())
        assert json.loads(cat.meta["NORMSTD"]) == pytest.approx(STD[1].tolist())


def test_predict_fits_stamps_with_ids_and_sky_positions(tmp_path):
    ckpt, net = make_checkpoint(tmp_path / "m.ckpt")
    x = raw_images(6, seed=1)
    ids = np.arange(1000, 1006)
    sky = [(150.0 + i, -2.0 + i) for i in range(6)]
    write_stamps(tmp_path / "stamps", x, ids=ids, sky=sky)
    write_stamps(tmp_path / "wcs", x, sky=sky, wcs=True)
    out = tmp_path / "cat.fits"
    assert (
        predict_main(
            [
                str(ckpt),
                str(tmp_path / "stamps"),
                "--out",
                str(out),
                "--id-key",
                "OBJID",
                "-q",
                "--gallery",
                str(tmp_path / "g.png"),
                "--gallery-size",
                "2",
            ]
        )
        == 0
    )
    cat = read_table(out)
    assert list(cat["object_id"]) == list(ids)
    assert list(cat["file"]) == [f"stamp_{i:04d}.fits" for i in range(6)]
    assert str(cat["ra"].unit) == "deg"
    np.testing.assert_allclose(cat["ra"], [s[0] for s in sky])
    np.testing.assert_allclose(cat["dec"], [s[1] for s in sky])
    np.testing.assert_allclose(cat["p_merger"], reference_probs(net, x), atol=1e-6)
    assert cat.meta["IDSRC"] == "FITS keyword OBJID"
    assert (tmp_path / "g.png").stat().st_size > 1000
    # no RA/DEC keywords: the WCS position of the stamp centre
    assert (
        predict_main([str(ckpt), str(tmp_path / "wcs"), "--out", str(tmp_path / "w.ecsv"), "-q"])
        == 0
    )
    cat = read_table(tmp_path / "w.ecsv")
    np.testing.assert_allclose(cat["ra"], [s[0] for s in sky], atol=1e-9)
    np.testing.assert_allclose(cat["dec"], [s[1] for s in sky], atol=1e-9)


def test_predict_hdf5_carries_galaxy_ids_and_cube_takes_ids_from_csv(tmp_path):
    from astropy.io import fits

    from galda.data.h5format import write_domain

    ckpt, net = make_checkpoint(tmp_path / "m.ckpt")
    x = raw_images(11, seed=2)
    gid = np.arange(500, 511)
    write_domain(tmp_path / "target.h5", x, None, gid, attrs={"domain": "target"})
    assert (
        predict_main(
            [
                str(ckpt),
                str(tmp_path / "target.h5"),
                "--out",
                str(tmp_path / "h.csv"),
                "-q",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    cat = read_table(tmp_path / "h.csv")
    assert list(cat["object_id"]) == list(gid)
    np.testing.assert_allclose(cat["p_merger"], reference_probs(net, x), atol=1e-6)

    fits.PrimaryHDU(x).writeto(tmp_path / "cube.fits")
    with open(tmp_path / "ids.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["objid", "other"])
        w.writerows([[f"SDSS-{i}", i] for i in range(11)])
    assert (
        predict_main(
            [
                str(ckpt),
                str(tmp_path / "cube.fits"),
                "--out",
                str(tmp_path / "c.ecsv"),
                "--ids",
                f"{tmp_path / 'ids.csv'}:objid",
                "-q",
            ]
        )
        == 0
    )
    cat = read_table(tmp_path / "c.ecsv")
    assert list(cat["object_id"]) == [f"SDSS-{i}" for i in range(11)]
    np.testing.assert_allclose(cat["p_merger"], reference_probs(net, x), atol=1e-6)


def test_ids_table_joined_on_filename_for_stamps(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    write_stamps(tmp_path / "stamps", raw_images(3))
    with open(tmp_path / "ids.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "name"])
        w.writerows([["stamp_0002.fits", "c"], ["stamp_0000.fits", "a"], ["stamp_0001.fits", "b"]])
    assert (
        predict_main(
            [
                str(ckpt),
                str(tmp_path / "stamps"),
                "--out",
                str(tmp_path / "o.csv"),
                "--ids",
                f"{tmp_path / 'ids.csv'}:name",
                "-q",
            ]
        )
        == 0
    )
    assert list(read_table(tmp_path / "o.csv")["object_id"]) == ["a", "b", "c"]


def test_sweep_folder_gives_ensemble_columns(tmp_path):
    nets = [make_run(tmp_path / "sweep" / f"seed={s}", seed=s, temperature=1.0 + s) for s in (1, 2)]
    x = raw_images(10, seed=3)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "e.fits"
    assert (
        predict_main([str(tmp_path / "sweep"), str(tmp_path / "x.npy"), "--out", str(out), "-q"])
        == 0
    )
    cat = read_table(out)
    members = np.stack(
        [reference_probs(n, x, t=1.0 + s) for n, s in zip(nets, (1, 2), strict=True)]
    )
    np.testing.assert_allclose(cat["p_merger"], members.mean(0), atol=1e-6)
    np.testing.assert_allclose(cat["p_merger_std"], members.std(0, ddof=1), atol=1e-6)
    assert set(cat["n_members"]) == {2}
    assert cat.meta["NMEMBERS"] == 2 and cat.meta["TEMPER"] == "2,3"


# --------------------------------------------------------------------------------------------
# mismatched input: one line, exit 2, nothing written
# --------------------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str, list[str], str]]:
    """case -> (input, expected message, extra arguments, catalogue name)."""
    from astropy.io import fits

    np.save(tmp_path / "size.npy", raw_images(4, shape=(3, 24, 24)))
    np.save(tmp_path / "bands.npy", raw_images(4, shape=(1, 20, 20)))
    x = raw_images(40)
    x[33, 1, 5, 5] = np.nan
    np.save(tmp_path / "nan.npy", x)
    stamps = raw_images(3)
    stamps[2, 0, 0, 0] = np.inf
    write_stamps(tmp_path / "nanstamps", stamps)
    fits.PrimaryHDU(raw_images(2)[0]).writeto(tmp_path / "rank3.fits")
    np.save(tmp_path / "ok.npy", raw_images(4))
    (tmp_path / "ids.csv").write_text("i\n1\n2\n3\n4\n5\n")
    ok = tmp_path / "ok.npy"
    return {
        "size": (tmp_path / "size.npy", "24×24 pixels but the model takes 20×20", [], "c.fits"),
        "bands": (tmp_path / "bands.npy", "1 band(s) but the model was trained on 3", [], "c.fits"),
        "nan": (tmp_path / "nan.npy", "non-finite pixels (NaN or inf) in row 33", [], "c.fits"),
        "nan stamp": (tmp_path / "nanstamps", "stamp_0002.fits: non-finite", [], "c.fits"),
        "rank": (tmp_path / "rank3.fits", "wrong rank", [], "c.fits"),
        "id key": (ok, "--id-key OBJID", ["--id-key", "OBJID"], "c.fits"),
        "ids": (ok, "5 ids for 4 images", ["--ids", f"{tmp_path / 'ids.csv'}:i"], "c.fits"),
        "format": (ok, "unknown catalogue format", [], "c.txt"),
    }


@pytest.mark.parametrize(
    "case", ["size", "bands", "nan", "nan stamp", "rank", "id key", "ids", "format"]
)
def test_mismatched_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    path, message, extra, name = _bad_inputs(tmp_path)[case]
    outdir = tmp_path / "out"
    outdir.mkdir()
    rc = predict_main(
        [
            str(ckpt),
            str(path),
            "--out",
            str(outdir / name),
            "--gallery",
            str(outdir / "g.png"),
            "-q",
            "--batch-size",
            "16",
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("galda.predict: error: ")
    assert message in err
    assert list(outdir.iterdir()) == []


def test_existing_output_is_kept_without_force(tmp_path, capsys):
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    np.save(tmp_path / "x.npy", raw_images(3))
    out = tmp_path / "cat.csv"
    out.write_text("keep me")
    assert predict_main([str(ckpt), str(tmp_path / "x.npy"), "--out", str(out), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me"
    assert (
        predict_main([str(ckpt), str(tmp_path / "x.npy"), "--out", str(out), "-q", "--force"]) == 0
    )
    assert len(read_table(out)) == 3


@pytest.mark.slow  # two interpreter start-ups (~15 s on the shared machine)
def test_command_line_entry_point(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    np.save(tmp_path / "x.npy", raw_images(3))
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "galda.predict",
            str(ckpt),
            str(tmp_path / "x.npy"),
            "--out",
            str(tmp_path / "c.csv"),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "3 images" in ok.stderr and (tmp_path / "c.csv").exists()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "galda.predict",
            str(tmp_path / "none.ckpt"),
            str(tmp_path / "x.npy"),
            "--out",
            str(tmp_path / "d.csv"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "none.ckpt: model not found" in bad.stderr
    assert not (tmp_path / "d.csv").exists()


@pytest.mark.parametrize("suffix", [".csv", ".ecsv"])
def test_text_catalogues_written_in_chunks_equal_one_pass(suffix):
    import astropy.units as u
    from astropy.table import Table

    from galda.predict.core import catalogue_bytes

    t = Table()
    t["file"] = [f"a b{i}.fits" if i % 3 else f"c,{i}" for i in range(25)]  # quoting needed
    t["p_merger"] = np.linspace(0, 1, 25).astype(np.float32)
    t["ra"] = np.arange(25.0) * u.deg
    t.meta["MODEL"] = "m.ckpt"
    whole = catalogue_bytes(t, Path(f"c{suffix}"), rows_per_chunk=1000)
    assert catalogue_bytes(t, Path(f"c{suffix}"), rows_per_chunk=7) == whole
    back = Table.read(whole.decode(), format="ascii" + suffix)
    assert list(back["file"]) == list(t["file"])


# --------------------------------------------------------------------------------------------
# acceptance: trained models, compared with their own test-time predictions
# --------------------------------------------------------------------------------------------


def _train_tiny(compose_cfg, data_dir, run_dir, *extra):
    from galda.train import train

    cfg = compose_cfg(
        "data=tiny",
        f"paths.data_dir={data_dir}",
        "model=tiny",
        "logger=none",
        *extra,
        run_dir=run_dir,
    )
    return cfg, train(cfg)


def _target_file(data_dir: Path) -> Path:
    return data_dir / "simulated" / "tiny-seed1" / "target.h5"


@pytest.mark.slow
def test_catalogue_equals_test_time_probabilities(compose_cfg, sim_data_dir, tmp_path):
    """Train (DANN, 2 epochs); predict the target test images from a FITS folder, an .npy and the
    domain file itself; every row equals predictions.npz, ids carried through."""
    from galda.data.h5format import read_domain

    run = tmp_path / "sweep" / "seed=1"
    cfg, results = _train_tiny(
        compose_cfg, sim_data_dir, run, "method=dann", "trainer.max_epochs=2", "seed=1"
    )
    assert results["status"] == "complete"
    with np.load(run / "predictions.npz") as z:
        probs, index, gid = z["target_probs"], z["target_index"], z["target_galaxy_id"]
    domain = read_domain(_target_file(sim_data_dir))
    images = domain.images[index]
    assert (domain.galaxy_id[index] == gid).all()

    write_stamps(tmp_path / "stamps", images, ids=gid)
    assert (
        predict_main(
            [
                str(run),
                str(tmp_path / "stamps"),
                "--out",
                str(tmp_path / "s.fits"),
                "--id-key",
                "OBJID",
                "--no-calibration",
                "-q",
            ]
        )
        == 0
    )
    cat = read_table(tmp_path / "s.fits")
    np.testing.assert_allclose(cat["p_merger"], probs, atol=1e-5)
    assert list(cat["object_id"]) == list(gid)
    assert cat.meta["BANDS"] == ",".join(domain.attrs["band_names"])
    assert cat.meta["GITCOMM"] == (results["git_commit"] or "unknown")

    np.save(tmp_path / "test.npy", images)
    (tmp_path / "ids.csv").write_text("gid\n" + "\n".join(str(g) for g in gid) + "\n")
    assert (
        predict_main(
            [
                str(run),
                str(tmp_path / "test.npy"),
                "--out",
                str(tmp_path / "n.csv"),
                "--ids",
                f"{tmp_path / 'ids.csv'}:gid",
                "--no-calibration",
                "-q",
            ]
        )
        == 0
    )
    cat = read_table(tmp_path / "n.csv")
    np.testing.assert_allclose(cat["p_merger"], probs, atol=1e-5)
    assert list(cat["object_id"]) == list(gid) and list(cat["row"]) == list(range(len(gid)))

    assert (
        predict_main(
            [
                str(run),
                str(_target_file(sim_data_dir)),
                "--out",
                str(tmp_path / "h.ecsv"),
                "--no-calibration",
                "-q",
            ]
        )
        == 0
    )
    cat = read_table(tmp_path / "h.ecsv")
    np.testing.assert_allclose(cat["p_merger"][index], probs, atol=1e-5)
    assert list(cat["object_id"][index]) == list(gid)

    # calibrated on the source validation split: the same images, softmax(z / T)
    from hydra.utils import instantiate

    from galda.calibration import calibrate_checkpoint
    from galda.provision import datamodule_config

    datamodule = instantiate(datamodule_config(cfg.data), _convert_="all")
    datamodule.configure_training(True, False)
    t = calibrate_checkpoint(results["checkpoint"], datamodule)
    assert (
        predict_main([str(run), str(tmp_path / "test.npy"), "--out", str(tmp_path / "t.csv"), "-q"])
        == 0
    )
    margin = np.log(probs) - np.log1p(-probs)
    expected = 1.0 / (1.0 + np.exp(-margin / t))
    np.testing.assert_allclose(read_table(tmp_path / "t.csv")["p_merger"], expected, atol=1e-5)

    # a second seed makes the folder an ensemble: mean and std of the two runs' test predictions
    _, second = _train_tiny(
        compose_cfg,
        sim_data_dir,
        tmp_path / "sweep" / "seed=2",
        "method=dann",
        "trainer.max_epochs=2",
        "seed=2",
    )
    with np.load(tmp_path / "sweep" / "seed=2" / "predictions.npz") as z:
        assert (z["target_index"] == index).all()
        probs2 = z["target_probs"]
    calibrate_checkpoint(second["checkpoint"], datamodule)
    assert (
        predict_main(
            [
                str(tmp_path / "sweep"),
                str(tmp_path / "test.npy"),
                "--out",
                str(tmp_path / "e.fits"),
                "--no-calibration",
                "-q",
            ]
        )
        == 0
    )
    cat = read_table(tmp_path / "e.fits")
    members = np.stack([probs, probs2])
    np.testing.assert_allclose(cat["p_merger"], members.mean(0), atol=1e-5)
    np.testing.assert_allclose(cat["p_merger_std"], members.std(0, ddof=1), atol=1e-5)
    assert set(cat["n_members"]) == {2} and cat.meta["NMEMBERS"] == 2


ALL_METHODS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_load_from_checkpoint_needs_no_other_argument(compose_cfg, sim_data_dir, tmp_path, method):
    from hydra.utils import get_class

    cfg, results = _train_tiny(
        compose_cfg, sim_data_dir, tmp_path / "run", f"method={method}", "trainer.max_epochs=1"
    )
    cls = get_class(cfg.method.module._target_)
    module = cls.load_from_checkpoint(results["checkpoint"])
    assert type(module) is cls and module.hparams["net"]["_target_"] == "galda.models.TinyNet"
    stats = results["normalisation"]
    np.testing.assert_allclose(
        module.normaliser.mean.numpy(),
        [stats["source"]["mean"], stats["target"]["mean"]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        module.normaliser.std.numpy(), [stats["source"]["std"], stats["target"]["std"]], rtol=1e-6
    )
    # the Lightning module and galda.load_model agree on raw images
    x = torch.from_numpy(read_domain_images(_target_file(sim_data_dir), 8))
    module.eval()
    with torch.no_grad():
        # AdaBN and per-domain batch norm (DANN's default): target images use the target
        # batch-norm statistics, which the checkpoint carries
        if method == "adabn" or cfg.method.module.get("domain_batchnorm"):
            assert torch.load(results["checkpoint"], weights_only=True)["adabn_target"]
            assert module.target_stats
            with module.target_statistics():
                expected = module(module.normalise(x, "target")).softmax(1)[:, 1]
        else:
            expected = module(module.normalise(x, "target")).softmax(1)[:, 1]
        got = load_model(results["checkpoint"], calibrated=False)(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def read_domain_images(path: Path, n: int) -> np.ndarray:
    from galda.data.h5format import read_domain

    return read_domain(path).images[:n]
