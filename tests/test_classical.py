"""galda.classical: Gini and M20 against their definitions and an analytic profile, failure
counting, the cache, the galaxy split, and the results file the report reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("statmorph")
pytest.importorskip("photutils")
pytest.importorskip("sklearn")

from galda import classical
from galda.data.h5format import DomainData

SIGMA = 5.0


def gaussian(
    size: int = 81, sigma: float = SIGMA, flux: float = 1e4, dx: float = 0.0
) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - size // 2
    return flux / (2 * np.pi * sigma**2) * np.exp(-((xx - dx) ** 2 + yy**2) / (2 * sigma**2))


def gini_by_definition(values: np.ndarray) -> float:
    """Lotz et al. (2004), Eq. 6: G = Σ_i (2i − n − 1)|X_i| / ((n − 1) Σ|X_i|), X ascending."""
    x = np.sort(np.abs(values.ravel()))
    n = len(x)
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / ((n - 1) * np.sum(x)))


def m20_by_definition(image: np.ndarray, region: np.ndarray) -> float:
    """Lotz et al. (2004), Eqs. 7–8: M20 = log10(Σ_{brightest 20 %} f r² / Σ_all f r²).

    r from the flux-weighted centroid of the region; the brightest pixels are taken in order until
    their flux reaches 20 % of the total (every pixel as bright as the last one taken included).
    """
    f = np.where(region, image, 0.0)
    yy, xx = np.indices(f.shape)
    xc, yc = (f * xx).sum() / f.sum(), (f * yy).sum() / f.sum()
    r2 = (xx - xc) ** 2 + (yy - yc) ** 2
    order = np.sort(f[region])[::-1]
    last = order[np.searchsorted(np.cumsum(order), 0.2 * f.sum())]
    bright = region & (f >= last)
    return float(np.log10((f * r2)[bright].sum() / (f * r2).sum()))


def gaussian_disc_gini(u: float) -> float:
    """Gini of I ∝ exp(−r²/2σ²) over a disc of radius R, U = R²/2σ² (continuous limit).

    Area is uniform in u = r²/2σ², so I = e^{−u} with u ~ U(0, U) and
    G = E|I₁ − I₂| / (2 E I) = (U − 2 + (2 + U) e^{−U}) / (U (1 − e^{−U})).
    """
    return (u - 2 + (2 + u) * np.exp(-u)) / (u * (1 - np.exp(-u)))


def gaussian_disc_m20(u: float, fraction: float = 0.2) -> float:
    """M20 of the same disc: Σ f r² within u ∝ 1 − (1 + u) e^{−u}; the brightest ``fraction`` of
    the flux is the inner disc u_b with 1 − e^{−u_b} = fraction · (1 − e^{−U})."""
    u_b = -np.log(1 - fraction * (1 - np.exp(-u)))

    def moment(v: float) -> float:
        return 1 - (1 + v) * np.exp(-v)

    return float(np.log10(moment(u_b) / moment(u)))


def brightest_fraction(image: np.ndarray, region: np.ndarray) -> float:
    """The flux fraction the brightest pixels really hold: whole pixels overshoot 20 %."""
    f = np.where(region, image, 0.0)
    order = np.sort(f[region])[::-1]
    last = order[np.searchsorted(np.cumsum(order), 0.2 * f.sum())]
    return float(f[f >= last].sum() / f.sum())


def _statmorph(image: np.ndarray):
    segmap, background, sigma = classical.segment_central(image)
    assert segmap is not None
    cls = classical._morphology_class()
    return cls(image - background, segmap, 1, weightmap=np.full_like(image, sigma))


def test_gini_and_m20_of_a_gaussian_match_definitions_and_analytic_values():
    image = gaussian()
    morph = _statmorph(image)
    assert morph.flag <= 1
    # the pixels statmorph used (its Petrosian "Gini segmap", on its cutout of the stamp)
    region = np.asarray(morph._segmap_gini, bool)
    cutout = np.asarray(morph._cutout_stamp_maskzeroed, np.float64)
    assert region.sum() > 100
    assert morph.gini == pytest.approx(gini_by_definition(cutout[region]), abs=1e-10)
    assert morph.m20 == pytest.approx(m20_by_definition(cutout, region), abs=0.01)
    # and the continuous Gaussian over a disc of the same area (M20 at the flux fraction the
    # whole brightest pixels hold: 22.5 % here, which moves M20 by +0.1 from the 20 % value)
    u = region.sum() / np.pi / (2 * SIGMA**2)
    assert morph.gini == pytest.approx(gaussian_disc_gini(u), abs=0.005)
    fraction = brightest_fraction(cutout, region)
    assert 0.2 <= fraction < 0.25
    assert morph.m20 == pytest.approx(gaussian_disc_m20(u, fraction), abs=0.01)


def test_asymmetry_separates_symmetric_and_lopsided_profiles():
    symmetric = classical.measure_stamp(gaussian())
    lopsided = classical.measure_stamp(gaussian() + gaussian(sigma=2.5, flux=3e3, dx=9.0))
    assert abs(symmetric[2]) < 0.02 and symmetric[3] <= 1
    assert lopsided[2] > 0.1 and lopsided[3] <= 1


def test_failures_are_counted_not_dropped():
    stamps = np.stack([gaussian(), np.zeros((81, 81))])
    out = classical.measure_images(stamps, n_jobs=1, progress=False)
    assert out["measured"].tolist() == [True, False]
    assert out["flag"][1] == -1 and np.isnan(out["gini"][1])
    assert len(out["gini"]) == 2


def _domain(ids: np.ndarray, labels: np.ndarray, name: str) -> DomainData:
    return DomainData(
        np.zeros((len(ids), 1, 4, 4), np.float32), labels, ids, {}, {"domain": name}, path=None
    )


def test_fit_and_score_uses_the_source_training_split_and_fills_failures():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(200), 2)
    labels = np.repeat(rng.integers(0, 2, 200), 2)
    data = {"source": _domain(ids, labels, "source"), "target": _domain(ids, labels, "target")}

    def features(shift: float) -> dict[str, np.ndarray]:
        gini = 0.4 + 0.2 * labels + rng.normal(0, 0.02, len(ids)) + shift
        out = {
            "gini": gini,
            "m20": rng.normal(-1.8, 0.1, len(ids)),
            "asymmetry": rng.normal(0.1, 0.05, len(ids)),
            "flag": np.zeros(len(ids), int),
            "measured": np.ones(len(ids), bool),
        }
        return out

    measured = {"source": features(0.0), "target": features(0.3)}  # target Gini biased upwards
    failed = np.array([0, 5, 11])
    for key in ("gini", "m20", "asymmetry"):
        measured["target"][key][failed] = np.nan
    measured["target"]["measured"][failed] = False
    scores = classical.fit_and_score(measured, data, split_seed=3, split_fractions=(0.7, 0.1, 0.2))

    split = classical.datamodule_split(data, 3, (0.7, 0.1, 0.2))
    test_rows = np.flatnonzero(np.isin(ids, split["test"]))
    preds = scores["predictions"]
    assert np.array_equal(preds["source_index"], test_rows)
    assert scores["classifier"]["train_size"] == int(np.isin(ids, split["train"]).sum())
    assert scores["test/source/acc"] > 0.95
    assert scores["test/target/acc"] < scores["test/source/acc"]  # the shift hurts, as it should
    fill = scores["classifier"]["fill_values"]
    train = np.isin(ids, split["train"])
    assert fill["gini"] == pytest.approx(np.median(measured["source"]["gini"][train]))
    # failed target stamps in the test split all get the same (median-feature) probability
    failed_test = [np.flatnonzero(test_rows == f)[0] for f in failed if f in test_rows]
    if len(failed_test) > 1:
        assert np.ptp(preds["target_probs"][failed_test]) == 0
    assert not preds["target_measured"][failed_test].any()


def test_split_matches_the_datamodule(tmp_path):
    from galda.data import DomainAdaptationDataModule
    from galda.data.h5format import read_domain
    from tests.conftest import make_domain_files

    src, tgt = make_domain_files(tmp_path, n_galaxies=30, views=2, noise=0.5)
    dm = DomainAdaptationDataModule(str(src), str(tgt), split_seed=4)
    dm.setup()
    data = {"source": read_domain(src), "target": read_domain(tgt)}
    split = classical.datamodule_split(data, 4, (0.7, 0.1, 0.2))
    for domain in ("source", "target"):
        for name in ("val", "test"):
            rows = np.flatnonzero(np.isin(data[domain].galaxy_id, split[name]))
            np.testing.assert_array_equal(rows, dm.datasets[domain][name].rows.numpy())
        n_train = int(np.isin(data[domain].galaxy_id, split["train"]).sum())
        assert n_train == dm.split_sizes[domain]["train"]


def test_cache_is_keyed_by_content(tmp_path, monkeypatch):
    images = np.stack([gaussian(size=31), gaussian(size=31, sigma=3.0)])[:, None].astype(np.float32)
    dd = DomainData(
        images,
        np.array([0, 1]),
        np.array([1, 2]),
        {},
        {"domain": "source"},
        path=tmp_path / "source.h5",
    )
    calls = []
    real = classical.measure_images

    def counting(stamps, **kw):
        calls.append(len(stamps))
        return real(stamps, **kw)

    monkeypatch.setattr(classical, "measure_images", counting)
    first, info = classical.measure_domain(dd, progress=False)
    again, info2 = classical.measure_domain(dd, progress=False)
    assert calls == [2] and info2["cached"] and not info["cached"]
    np.testing.assert_array_equal(first["gini"], again["gini"])
    assert len(list(tmp_path.glob(".classical-source-*.npz"))) == 1
    dd.images[1, 0, 15, 15] *= 1.5  # new content: measured again, in a new cache file
    classical.measure_domain(dd, progress=False)
    assert calls == [2, 2]
    assert len(list(tmp_path.glob(".classical-source-*.npz"))) == 2


def test_command_line_writes_a_report_row(tmp_path):
    from galda.report.collect import load_run
    from tests.conftest import make_domain_files

    make_domain_files(tmp_path / "data", n_galaxies=10, views=2, noise=0.3)
    out = tmp_path / "classical"
    code = classical.main(
        [
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--jobs",
            "1",
            "--name",
            "tiny",
            "--no-progress",
        ]
    )
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert (res["model"], res["method"], res["seed"], res["status"]) == (
        "classical",
        "gini_m20_a",
        0,
        "complete",
    )
    assert res["uses_target_images"] is False and res["uses_target_labels"] is False
    assert set(res["measured_fraction"]) == {"source", "target"}
    assert 0 <= res["measured_fraction"]["target"] <= 1
    assert res["split_sizes"]["source"]["test"] == 4  # 2 of 10 galaxies, 2 views each
    run = load_run(out / "results.json")
    assert run.complete and run.method == "gini_m20_a" and run.data == "tiny"
    assert 0 <= run.metrics[("target", "acc")] <= 1
    assert (out / "predictions.npz").is_file()
    assert list((tmp_path / "data").glob(".classical-*.npz"))  # cached beside the data


def test_command_line_bad_input(tmp_path, capsys):
    assert classical.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "source.h5" in err
