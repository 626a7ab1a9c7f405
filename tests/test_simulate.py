"""The embedded GalSim simulator (galda.simulate): layout, determinism, balance, noise level, CLI."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from galda.data.h5format import read_domain
from galda.simulate import PARAM_NAMES, PRESETS, TARGET_ID_OFFSET, simulate_domains
from galda.simulate.__main__ import main

SMALL = {"n_mergers": 10, "n_nonmergers": 8, "views": 2}  # a cut-down tiny for the extra runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    src, tgt = simulate_domains("tiny", out, seed=1, workers=1, progress=False)
    return read_domain(src), read_domain(tgt)


def test_layout_and_attrs(tiny):
    src, tgt = tiny
    n = PRESETS["tiny"]["n_mergers"] + PRESETS["tiny"]["n_nonmergers"]
    for dom, name in ((src, "source"), (tgt, "target")):
        assert dom.images.shape == (n, 3, 75, 75) and dom.images.dtype == np.float32
        assert dom.labels.shape == (n,) and dom.galaxy_id.dtype == np.int64
        assert np.isfinite(dom.images).all()
        a = dom.attrs
        assert a["domain"] == name and a["producer"] == "galda.simulate"
        assert a["preset"] == "tiny" and a["seed"] == 1
        assert a["band_names"] == ["F814W", "F356W", "F160W"]
        assert a["pixel_scale_arcsec"] == pytest.approx(0.125)
        assert a["psf_fwhm_arcsec"] == pytest.approx([0.13, 0.18, 0.20])
        assert a["sb_limit_mag_arcsec2"] == 25.0
        assert "schema_version" in a and "galda_version" in a
        assert set(PARAM_NAMES) <= set(dom.params)
    assert src.attrs["noise_sigma"] == [0.0, 0.0, 0.0]
    assert all(s > 0 for s in tgt.attrs["noise_sigma"])


def test_classes_ids_and_params(tiny):
    src, tgt = tiny
    assert (src.labels == 1).sum() == PRESETS["tiny"]["n_mergers"]
    assert (src.labels == 0).sum() == PRESETS["tiny"]["n_nonmergers"]
    np.testing.assert_array_equal(src.galaxy_id, tgt.galaxy_id)
    np.testing.assert_array_equal(src.labels, tgt.labels)
    # views share a galaxy id and a label
    for g in np.unique(src.galaxy_id):
        assert len(set(src.labels[src.galaxy_id == g])) == 1
    assert len(np.unique(src.galaxy_id)) < len(src.galaxy_id)
    p = src.params
    m = src.labels == 1
    assert np.isnan(p["flux_ratio"][~m]).all() and np.isnan(p["separation_arcsec"][~m]).all()
    assert (p["flux_ratio"][m] >= 0.1 - 1e-6).all() and (p["flux_ratio"][m] <= 1 + 1e-6).all()
    assert np.isfinite(p["separation_arcsec"][m]).all()
    assert set(np.unique(p["has_neighbour"])) <= {0.0, 1.0}
    # the source is noiseless and non-negative up to FFT round-off; the light is in the stamp
    assert src.images.min() > -0.05 * src.images.max()
    assert (src.images.sum(axis=(2, 3)) > 0).all()


def test_noise_level(tiny):
    src, tgt = tiny
    resid = (tgt.images - src.images).astype(np.float64)
    sigma = np.asarray(tgt.attrs["noise_sigma"])
    got = resid.std(axis=(0, 2, 3))
    np.testing.assert_allclose(got, sigma, rtol=0.02)
    assert abs(resid.mean()) < 0.02 * sigma.mean()
    # the target is noisier than the source in every band
    assert (tgt.images.std(axis=(0, 2, 3)) > src.images.std(axis=(0, 2, 3))).all()


def test_deterministic_and_worker_independent(tmp_path):
    a = simulate_domains("tiny", tmp_path / "a", seed=1, workers=2, progress=False, **SMALL)
    b = simulate_domains("tiny", tmp_path / "b", seed=1, workers=1, progress=False, **SMALL)
    for pa, pb in zip(a, b):
        with h5py.File(pa) as fa, h5py.File(pb) as fb:
            assert fa["images"][()].tobytes() == fb["images"][()].tobytes()
            np.testing.assert_array_equal(fa["galaxy_id"][()], fb["galaxy_id"][()])
            np.testing.assert_array_equal(fa["labels"][()], fb["labels"][()])
    assert read_domain(a[0]).images.shape[0] == SMALL["n_mergers"] + SMALL["n_nonmergers"]
    c = simulate_domains("tiny", tmp_path / "c", seed=2, workers=1, progress=False, **SMALL)
    with h5py.File(a[0]) as fa, h5py.File(c[0]) as fc:
        assert fa["images"][()].tobytes() != fc["images"][()].tobytes()


def test_cached_return_and_mismatch(tmp_path):
    src, tgt = simulate_domains("tiny", tmp_path, seed=3, progress=False, **SMALL)
    mtime = src.stat().st_mtime_ns
    again = simulate_domains("tiny", tmp_path, seed=3, progress=False, **SMALL)
    assert again == (src, tgt) and src.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError):
        simulate_domains("tiny", tmp_path, seed=4, progress=False, **SMALL)


def test_unpaired_target(tmp_path):
    src, tgt = simulate_domains("tiny", tmp_path, seed=1, paired=False, progress=False, **SMALL)
    s, t = read_domain(src), read_domain(tgt)
    assert (t.galaxy_id >= TARGET_ID_OFFSET).all() and (s.galaxy_id < TARGET_ID_OFFSET).all()
    assert (t.labels == 1).sum() == SMALL["n_mergers"]
    assert not t.attrs["paired"] and not s.attrs["paired"]
    assert not np.allclose(s.images, t.images, atol=50.0)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-progress",
            "--n-mergers",
            "4",
            "--n-nonmergers",
            "4",
        ]
    )
    assert rc == 0
    assert (out / "source.h5").exists() and (out / "target.h5").exists()
    text = capsys.readouterr().out
    assert "F160W" in text and "mergers" in text and str(out) in text
    with pytest.raises(SystemExit) as bad:
        main(["--preset", "nope", "--out", str(tmp_path / "x")])
    assert bad.value.code == 2 and "nope" in capsys.readouterr().err
    assert main(["--preset", "tiny", "--out", str(out), "--no-progress"]) == 2  # exists: refused
    assert "exist" in capsys.readouterr().err


def test_cli_bad_option_exits_cleanly(tmp_path):
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "galda.simulate",
            "--preset",
            "tiny",
            "--out",
            str(tmp_path),
            "--bogus",
            "1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "bogus" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "source.h5").exists()
