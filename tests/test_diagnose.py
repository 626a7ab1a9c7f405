"""galda.diagnose: the MMD permutation test, the proxy A-distance, noise and power spectra, and the
data / run command lines on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from galda.diagnose import stats
from galda.diagnose.__main__ import main

pytest.importorskip("sklearn")


def _blobs(n: int, rng: np.random.Generator, noise: float = 0.0, size: int = 15) -> np.ndarray:
    """Tiny 3-band stamps: a Gaussian blob of random width and brightness, plus white noise."""
    yy, xx = np.mgrid[:size, :size] - size // 2
    width = rng.uniform(1.5, 3.0, n)[:, None, None]
    amp = rng.uniform(5.0, 20.0, n)[:, None, None]
    blob = amp * np.exp(-(xx**2 + yy**2) / (2 * width**2))
    images = np.repeat(blob[:, None], 3, axis=1) * np.array([0.5, 1.0, 0.8])[None, :, None, None]
    return (images + rng.normal(0, noise, images.shape)).astype(np.float32) if noise else images


def _reference_mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Unbiased MMD² by its definition (Gretton et al. 2012, Eq. 3), with explicit loops."""

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_mmd_statistic_matches_reference():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), rng.normal(0.5, 1.0, size=(9, 4))
    result = stats.mmd_permutation_test(x, y, n_permutations=20, seed=0)
    z = np.concatenate([x, y])
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    sigma = np.median(d[np.triu_indices(len(z), 1)])
    assert result.bandwidth == pytest.approx(sigma)
    assert result.mmd2 == pytest.approx(_reference_mmd2(x, y, sigma), rel=1e-10)
    # each permuted statistic is the same estimator on a relabelled pooled sample
    assert np.all(np.isfinite(result.null)) and len(result.null) == 20


def test_mmd_test_detects_shift_and_accepts_same_distribution():
    rng = np.random.default_rng(1)
    source = _blobs(160, rng)
    target = _blobs(80, rng, noise=1.0)  # the same galaxies' kind, observed with noise
    scales = stats.asinh_scales(np.concatenate([source, target]))
    emb_s = stats.pixel_embedding(source, scales, factor=3)
    emb_t = stats.pixel_embedding(target, scales, factor=3)
    half_a, half_b = emb_s[:80], emb_s[80:]
    shifted = stats.mmd_permutation_test(half_a, emb_t, n_permutations=500, seed=0)
    same = stats.mmd_permutation_test(half_a, half_b, n_permutations=500, seed=0)
    assert shifted.p_value < 0.01
    assert same.p_value > 0.05
    assert shifted.mmd2 > same.mmd2
    assert shifted.p_value == pytest.approx(1 / 501)  # no permutation reaches the observed value


def test_proxy_a_distance_extremes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 5))
    far = stats.proxy_a_distance(x, x + 10.0, seed=0)
    near = stats.proxy_a_distance(x[:100], x[100:], seed=0)
    assert far["heldout_accuracy"] == 1.0 and far["a_distance"] == 2.0
    assert near["heldout_accuracy"] < 0.7 and near["a_distance"] < 0.8


def test_noise_and_power_spectrum_of_white_noise():
    rng = np.random.default_rng(3)
    sigma = np.array([0.5, 2.0, 3.0])
    images = rng.normal(size=(200, 3, 32, 32)) * sigma[None, :, None, None]
    noise = stats.border_noise(images)
    np.testing.assert_allclose(np.median(noise["mad_std"], axis=0), sigma, rtol=0.05)
    np.testing.assert_allclose(np.median(noise["clipped_std"], axis=0), sigma, rtol=0.05)
    k, power = stats.radial_power_spectrum(images)
    assert k[0] == pytest.approx(1 / 32) and k[-1] == pytest.approx(0.5)
    # |FFT|² / (H W) of white noise has expectation σ² at every frequency (Parseval)
    np.testing.assert_allclose(power.mean(axis=1), sigma**2, rtol=0.05)
    assert np.all(power.std(axis=1) / power.mean(axis=1) < 0.1)


def test_pixel_embedding_is_blockmean_of_asinh():
    rng = np.random.default_rng(4)
    images = rng.normal(size=(2, 2, 7, 7))
    scales = np.array([1.0, 2.0])
    emb = stats.pixel_embedding(images, scales, factor=3)
    crop = images[:, :, :6, :6]  # centre crop of 7 to 6 starts at (7 - 6) // 2 = 0
    expected = np.arcsinh(crop[0, 1, 3:6, 0:3] / 2.0).mean()
    assert emb.shape == (2, 2 * 2 * 2)
    assert emb[0, 4 + 2] == pytest.approx(expected)


def _write_blob_domains(folder: Path, n_galaxies: int = 100, noise: float = 1.0) -> None:
    """Paired domain files: 2 views of each blob galaxy; the target adds white noise."""
    from galda.data.h5format import write_domain

    rng = np.random.default_rng(5)
    source = _blobs(2 * n_galaxies, rng, size=30)
    target = source + rng.normal(0, noise, source.shape).astype(np.float32)
    ids = np.repeat(np.arange(n_galaxies), 2)
    labels = rng.integers(0, 2, len(ids))
    for name, images in (("source", source), ("target", target)):
        write_domain(
            folder / f"{name}.h5",
            images,
            labels,
            ids,
            attrs={"domain": name, "band_names": ["a", "b", "c"]},
        )


def test_data_command_line(tmp_path):
    _write_blob_domains(tmp_path / "data")
    out = tmp_path / "diag"
    code = main([str(tmp_path / "data"), "--out", str(out), "--permutations", "200"])
    assert code == 0
    result = json.loads((out / "data_diagnostics.json").read_text())
    tests = result["tests"]
    assert tests["source_vs_target"]["mmd"]["p_value"] < 0.01
    assert tests["source_half_vs_half"]["mmd"]["p_value"] > 0.05
    assert 0.0 <= tests["source_vs_target"]["proxy_a_distance"]["a_distance"] <= 2.0
    band = result["bands"][0]
    assert result["per_band"][band]["target"]["noise_mad_std"] == pytest.approx(1.0, rel=0.1)
    assert result["per_band"][band]["source"]["noise_mad_std"] < 1e-6
    for name in ("data_diagnostics.png", "data_diagnostics.pdf"):
        assert (out / name).stat().st_size > 1000
    assert not list(out.glob(".*.tmp"))


def test_data_command_line_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "source.h5" in err and "--source" in err
    assert main(["--source", str(tmp_path / "x.h5"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "junk.h5").write_text("not hdf5")
    code = main(
        [
            "--source",
            str(tmp_path / "junk.h5"),
            "--target",
            str(tmp_path / "junk.h5"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "junk.h5" in capsys.readouterr().err


def _fake_run(tmp_path: Path, compose_cfg, lightning_checkpoint: bool = False) -> Path:
    """A complete run folder for the tiny network on synthetic data, without training.

    ``lightning_checkpoint``: the checkpoint carries the network config in its hyper-parameters
    (what training writes now); otherwise only a state dict (older runs).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from galda import results as res
    from tests.conftest import make_domain_files

    data_dir = tmp_path / "data"
    make_domain_files(data_dir / "simulated" / "tiny-seed1", n_galaxies=30, views=2, noise=0.5)
    run_dir = tmp_path / "run"
    cfg = compose_cfg(
        "data=tiny", "model=tiny", "method=dann", f"paths.data_dir={data_dir}", run_dir=run_dir
    )
    torch.manual_seed(0)
    if lightning_checkpoint:
        import pytorch_lightning as pl

        from galda.train import build_module

        module = build_module(cfg)
        extra = {
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        }
    else:
        module = instantiate(cfg.method.module, net=instantiate(cfg.model.net))
        extra = {}
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    torch.save(
        {"state_dict": module.state_dict(), **extra}, run_dir / "checkpoints" / "epoch000.ckpt"
    )
    res.write_results(
        run_dir,
        {
            "status": "complete",
            "data": "tiny",
            "model": "tiny",
            "method": "dann",
            "seed": 1,
            "checkpoint": "/elsewhere/checkpoints/epoch000.ckpt",
            "test/source/acc": 0.5,
            "test/target/acc": 0.5,
        },
    )
    return run_dir


@pytest.mark.parametrize("lightning_checkpoint", [False, True])
def test_load_run_model_restores_weights(tmp_path, compose_cfg, lightning_checkpoint):
    from galda.diagnose.runs import load_run_model, test_sets

    run_dir = _fake_run(tmp_path, compose_cfg, lightning_checkpoint)
    module, cfg, results = load_run_model(run_dir)
    saved = torch.load(run_dir / "checkpoints" / "epoch000.ckpt", weights_only=False)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, saved["state_dict"][key])
    assert results["checkpoint_used"].endswith("run/checkpoints/epoch000.ckpt")
    sets = test_sets(cfg, run_dir)
    # 30 galaxies, 20 % test (rounded as the DataModule does), 2 views each
    assert len(sets["source"].images) == len(sets["source"].rows) == 2 * (30 - 21 - 3)
    assert np.array_equal(sets["source"].galaxy_id, sets["target"].galaxy_id)
    assert type(module).__name__ == "DANNClassifier" and not module.training


def test_runs_command_line(tmp_path, compose_cfg):
    pytest.importorskip("captum")
    run_dir = _fake_run(tmp_path, compose_cfg)
    out = tmp_path / "diag"
    code = main(
        [
            str(run_dir),
            str(run_dir),
            "--out",
            str(out),
            "--projection",
            "tsne",
            "--saliency-examples",
            "1",
        ]
    )
    assert code == 0
    result = json.loads((out / "runs_diagnostics.json").read_text())
    assert len(result["runs"]) == 2
    first = next(iter(result["runs"].values()))
    assert 0.0 <= first["domain_classifier"]["heldout_accuracy"] <= 1.0
    assert first["n_test"] == {"source": 12, "target": 12}
    assert len(first["saliency_examples"]["source"]) == 2
    for name in ("latent_space.png", "saliency.png", "latent_space.pdf", "saliency.pdf"):
        assert (out / name).stat().st_size > 1000


def test_saliency_is_integrated_gradients():
    """Completeness: Σ IG = F(x) − F(baseline) for a linear model, where IG = x · w exactly."""
    from galda.diagnose.runs import saliency

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(2, 3 * 5 * 5))

        def forward(self, x):
            return x.flatten(1), x.flatten(1) @ self.w.T

    module = torch.nn.Module()
    module.net = Linear()
    x = torch.randn(2, 3, 5, 5)
    maps = saliency(module, x, n_steps=8)
    expected = (x * module.net.w[1].detach().reshape(3, 5, 5)).abs().sum(1)
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-4, atol=1e-6)
