"""Temperature scaling, ECE and reliability bins against plain reference implementations."""

import math

import numpy as np
import pytest
import torch

from galda.calibration import (
    MAX_TEMPERATURE,
    apply_temperature,
    calibrate_checkpoint,
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    reliability_bins,
    temperature_nll,
)


def _nll_reference(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    """Mean -log softmax(z / T)[y], written out with a stable log-sum-exp."""
    z = logits / t
    m = z.max(axis=1, keepdims=True)
    log_norm = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


def _overconfident(n: int, true_t: float, seed: int, k: int = 2):
    """Labels drawn from softmax(z), logits reported as z * true_t (so T* ≈ true_t)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, k))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z * true_t, y


@pytest.mark.parametrize("true_t,k", [(2.5, 2), (0.6, 2), (1.7, 4)])
def test_fit_temperature_minimises_the_reference_nll(true_t, k):
    logits, y = _overconfident(3000, true_t, seed=int(true_t * 10) + k, k=k)
    t = fit_temperature(logits, y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    nll = np.array([_nll_reference(logits, y, g) for g in grid])
    t_grid = grid[nll.argmin()]
    assert t == pytest.approx(t_grid, rel=2e-3)  # grid step is 0.15%
    assert _nll_reference(logits, y, t) <= nll.min() + 1e-9
    assert t == pytest.approx(true_t, rel=0.15)  # recovers the distortion from 3000 samples
    assert temperature_nll(logits, y, t) == pytest.approx(_nll_reference(logits, y, t), rel=1e-9)


def test_fit_temperature_binary_logit_equals_two_column_form():
    logits, y = _overconfident(500, 2.0, seed=3)
    margin = logits[:, 1] - logits[:, 0]  # softmax over (a, b) depends only on b - a
    assert fit_temperature(margin, y) == pytest.approx(fit_temperature(logits, y), rel=1e-6)


def test_fit_temperature_keeps_predictions_and_stays_bounded():
    z = np.array([[0.0, 5.0], [5.0, 0.0], [0.0, 3.0], [2.0, 0.0]])
    y = np.array([1, 0, 1, 0])  # perfectly separated: NLL keeps falling as T -> 0
    t = fit_temperature(z, y)
    assert 1.0 / MAX_TEMPERATURE <= t < 0.2
    assert (torch.tensor(z / t).argmax(1).numpy() == z.argmax(1)).all()
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, int)) == 1.0
    with pytest.raises(ValueError):
        fit_temperature(z, np.array([0, 1, 2, 0]))


def test_apply_temperature_equals_softmax_of_scaled_logits():
    logits, _ = _overconfident(50, 1.0, seed=9)
    p = torch.softmax(torch.tensor(logits), 1)[:, 1].numpy()
    expected = torch.softmax(torch.tensor(logits) / 2.5, 1)[:, 1].numpy()
    np.testing.assert_allclose(apply_temperature(p, 2.5), expected, atol=1e-12)
    assert list(apply_temperature([0.0, 1.0], 3.0)) == [0.0, 1.0]


def _ece_reference(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """Guo et al. (2017) Eq. 3 with an explicit loop over bins (lo, hi]."""
    pred = (p > 0.5).astype(int)
    conf = np.where(pred == 1, p, 1 - p)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("seed,n_bins", [(0, 15), (1, 10), (2, 1)])
def test_ece_matches_reference(seed, n_bins):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 700)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 700), 0, 1)
    p[:20] = np.round(p[:20], 1)  # values on bin edges
    assert expected_calibration_error(p, y, n_bins) == pytest.approx(
        _ece_reference(p, y, n_bins), abs=1e-12
    )
    bins = reliability_bins(p, y, n_bins)
    assert bins["count"].sum() == len(p)


def test_ece_of_perfectly_calibrated_and_of_wrong_predictions():
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)  # labels drawn from p itself
    assert expected_calibration_error(p, y) < 0.01
    wrong = np.array([0.99, 0.01, 0.95])
    assert expected_calibration_error(wrong, np.array([0, 1, 0])) == pytest.approx(
        (0.99 + 0.99 + 0.95) / 3
    )
    assert math.isnan(expected_calibration_error(np.zeros(0), np.zeros(0)))


def test_ece_multiclass_probabilities():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    y = np.array([0, 2, 2])
    # one sample per bin (n_bins=10): |1 - .7| + |0 - .8| + |1 - .4|
    assert expected_calibration_error(probs, y, 10) == pytest.approx((0.3 + 0.8 + 0.6) / 3)


def test_reliability_plot_draws_each_curve(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.4 * y + rng.uniform(0, 0.6, 300), 0, 1)
    fig = plot_reliability({"source": (p, y), "target": (1 - p, y)})
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert any(lab.startswith("source (ECE") for lab in labels)
    assert any(lab.startswith("target (ECE") for lab in labels)
    fig.savefig(tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 1000


class _FakeDataModule:
    """The two members calibrate_checkpoint uses: split_sizes and val_dataloader()."""

    def __init__(self, x, y):
        self.split_sizes = {"source": {"val": len(y)}}
        self._data = (x, y)

    def val_dataloader(self):
        x, y = self._data
        batches = [
            {"image": x[i : i + 16], "label": y[i : i + 16], "index": torch.arange(i, i + 16)}
            for i in range(0, len(y), 16)
        ]
        return {"source": batches, "target": [(x * 100, 1 - y)]}  # target must not be read


def test_calibrate_checkpoint_stores_the_fitted_temperature(tmp_path):
    from tests.test_predict import make_checkpoint

    ckpt, net = make_checkpoint(tmp_path / "m.ckpt", seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 20, 20, generator=g)
    y = torch.randint(0, 2, (64,), generator=g)
    t = calibrate_checkpoint(ckpt, _FakeDataModule(x, y))
    with torch.no_grad():
        logits = net(x)[1].double().numpy()
    assert t == pytest.approx(fit_temperature(logits, y.numpy()), rel=1e-6)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["temperature"] == pytest.approx(t)
    assert saved["calibration"]["fitted_on"] == "source/val"
    assert saved["calibration"]["n_images"] == 64
    assert saved["calibration"]["nll_after"] <= saved["calibration"]["nll_before"] + 1e-12
    assert "state_dict" in saved and not list(tmp_path.glob(".*.tmp"))
