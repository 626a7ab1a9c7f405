"""Tests for galda.losses and the DANN domain discriminator (issue 4 acceptance, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import galda.losses as losses_module
from galda.losses import (
    PAPER_VARIANCES,
    FisherLoss,
    MMDLoss,
    domain_adversarial_loss,
    entropy_loss,
    expansion_error_bound,
    ganin_coefficient,
    grad_reverse,
    median_variances,
    multi_kernel_mmd,
    reversal_coefficient,
)
from galda.models.discriminator import DomainDiscriminator


def reference_mmd(x: list[list[float]], y: list[list[float]], variances, unbiased: bool) -> float:
    """Plain double-loop float64 MMD² with k(a,b) = Σ_s exp(−‖a−b‖²/(2s)) (paper Eq. 3)."""

    def k(a: list[float], b: list[float]) -> float:
        d2 = sum((ai - bi) ** 2 for ai, bi in zip(a, b))
        return sum(math.exp(-d2 / (2.0 * s)) for s in variances)

    def within(z: list[list[float]]) -> float:
        n = len(z)
        pairs = [(i, j) for i in range(n) for j in range(n) if (i != j or not unbiased)]
        norm = n * (n - 1) if unbiased else n * n
        return sum(k(z[i], z[j]) for i, j in pairs) / norm

    cross = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return within(x) + within(y) - 2.0 * cross


def _samples(seed: int, n_s: int, n_t: int, d: int, shift: float = 0.0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_s, d, generator=g) * scale
    y = torch.randn(n_t, d, generator=g) * scale + shift
    return x, y


# --------------------------------------------------------------------------- MMD vs reference


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize(
    "variances,scale",
    [
        (PAPER_VARIANCES, 1.0),
        ((0.5, 2.0, 8.0), 1.0),
        ((1e-3, 1e-2, 0.1), 0.1),  # small bandwidths at a matching data scale
    ],
)
def test_mmd_matches_double_loop_reference(unbiased, variances, scale):
    x, y = _samples(0, n_s=7, n_t=11, d=4, shift=0.3, scale=scale)
    got = multi_kernel_mmd(x, y, variances, unbiased=unbiased)
    want = reference_mmd(x.double().tolist(), y.double().tolist(), variances, unbiased)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=1e-4, atol=1e-5)


def test_mmd_accepts_tensor_variances_and_mmdloss_paper_matches():
    x, y = _samples(1, 6, 9, 3, shift=0.5)
    s = torch.tensor([0.5, 1.0, 4.0])
    torch.testing.assert_close(
        multi_kernel_mmd(x, y, s), multi_kernel_mmd(x, y, (0.5, 1.0, 4.0)), rtol=0, atol=0
    )
    loss = MMDLoss(bandwidths="paper", unbiased=False)
    torch.testing.assert_close(
        loss(x.reshape(6, 1, 3), y.reshape(9, 3, 1)), multi_kernel_mmd(x, y, PAPER_VARIANCES, False)
    )


def test_biased_minus_unbiased_is_diagonal_correction():
    x, y = _samples(2, 5, 8, 3)
    s = (1.0, 3.0)
    diff = multi_kernel_mmd(x, y, s, unbiased=False) - multi_kernel_mmd(x, y, s, unbiased=True)
    xl, yl = x.tolist(), y.tolist()
    ref = reference_mmd(xl, yl, s, False) - reference_mmd(xl, yl, s, True)
    torch.testing.assert_close(diff, torch.tensor(ref, dtype=torch.float32), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- MMD distance routes


def plain_mmd64(x: torch.Tensor, y: torch.Tensor, variances, unbiased: bool) -> torch.Tensor:
    """Float64 MMD² from explicit differences (x_i − y_j)², differentiable (gradient reference)."""

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)
        return sum(torch.exp(-d2 / (2.0 * s)) for s in variances)

    def within(z: torch.Tensor) -> torch.Tensor:
        kz, n = k(z, z), len(z)
        if unbiased:
            return (kz.sum() - kz.diagonal().sum()) / (n * (n - 1))
        return kz.mean()

    return within(x) + within(y) - 2.0 * k(x, y).mean()


def _value_and_grads(fn, x: torch.Tensor, y: torch.Tensor):
    x, y = x.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(True)
    value = fn(x, y)
    value.backward()
    return value.detach(), x.grad, y.grad


def _spy_routes(monkeypatch) -> dict[str, list[int]]:
    """Records the exact-distance routes taken: whole matrices ("direct": batch size) and
    single pairs ("pairs": number of pairs)."""
    seen: dict[str, list[int]] = {"direct": [], "pairs": []}
    direct, pairs = losses_module._direct_squared_distances, losses_module._with_exact_pairs

    def spy_direct(pooled, n_s):
        seen["direct"].append(len(pooled))
        return direct(pooled, n_s)

    def spy_pairs(sq_dist, pooled, flagged):
        seen["pairs"].append(len(flagged))
        return pairs(sq_dist, pooled, flagged)

    monkeypatch.setattr(losses_module, "_direct_squared_distances", spy_direct)
    monkeypatch.setattr(losses_module, "_with_exact_pairs", spy_pairs)
    return seen


FAST_ONLY = {"direct": [], "pairs": []}


def _features_like_deepmerge(seed: int, n: int, d: int = 2592) -> torch.Tensor:
    """Non-negative features with ‖z‖² of a few thousand, like DeepMerge's flattened maps."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, d, generator=g) + 0.3) * 1.2


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("variances", [(0.5, 2.0, 8.0), (0.05, 1.0, 30.0)])
def test_fast_path_value_and_gradients_match_float64(monkeypatch, unbiased, variances):
    calls = _spy_routes(monkeypatch)
    x, y = _samples(5, 13, 9, 6, shift=0.4)
    got = _value_and_grads(lambda a, b: multi_kernel_mmd(a, b, variances, unbiased), x, y)
    want = _value_and_grads(
        lambda a, b: plain_mmd64(a, b, variances, unbiased), x.double(), y.double()
    )
    assert calls == FAST_ONLY  # the rule kept the matrix-multiply distances
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w.float(), rtol=2e-4, atol=2e-6)


def test_fast_path_median_loss_on_deepmerge_sized_features(monkeypatch):
    calls = _spy_routes(monkeypatch)
    x = _features_like_deepmerge(6, 32, d=512)
    y = _features_like_deepmerge(7, 24, d=512) * 1.1
    loss = MMDLoss(bandwidths="median", unbiased=True)
    got = _value_and_grads(loss, x, y)
    s = median_variances(x.double(), y.double())
    want = _value_and_grads(
        lambda a, b: plain_mmd64(a, b, s.tolist(), True), x.double(), y.double()
    )
    assert calls == FAST_ONLY
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.float(), rtol=1e-3, atol=1e-7)
    assert got[0].abs() > 1e-3


def test_paper_set_uses_direct_distances_when_a_tiny_kernel_is_alive(monkeypatch):
    """A near-duplicate pair puts the 1e-6 kernel to work: the expansion's error (≫ 1e-6 for
    ‖z‖² in the thousands) would change that kernel completely, so the rule recomputes that
    pair from direct differences, and the result matches the float64 reference, gradients
    included."""
    calls = _spy_routes(monkeypatch)
    x = _features_like_deepmerge(8, 10, d=256) * 4
    y = _features_like_deepmerge(9, 12, d=256) * 4
    x[3] = x[1] + 3e-4 * torch.randn(256, generator=torch.Generator().manual_seed(1)) / 16
    pooled = torch.cat([x, y])
    assert expansion_error_bound(pooled - pooled.mean(0)).max() > 1e-4
    got = _value_and_grads(lambda a, b: multi_kernel_mmd(a, b, PAPER_VARIANCES), x, y)
    want = _value_and_grads(
        lambda a, b: plain_mmd64(a, b, PAPER_VARIANCES, True), x.double(), y.double()
    )
    assert calls == {"direct": [], "pairs": [1]}  # the pair (1, 3) only
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.float(), rtol=1e-3, atol=1e-5)
    matmul = multi_kernel_mmd(x, y, PAPER_VARIANCES, distances="matmul")
    assert (matmul - want[0]).abs() > 100 * (got[0] - want[0]).abs()


def test_many_near_duplicates_fall_back_to_direct_matrix(monkeypatch):
    calls = _spy_routes(monkeypatch)
    g = torch.Generator().manual_seed(2)
    centre = _features_like_deepmerge(3, 1, d=128) * 4  # two tight clusters far apart
    x = centre + 1e-4 * torch.randn(6, 128, generator=g)
    y = centre + 50.0 + 1e-4 * torch.randn(5, 128, generator=g)
    got = _value_and_grads(lambda a, b: multi_kernel_mmd(a, b, PAPER_VARIANCES), x, y)
    want = _value_and_grads(
        lambda a, b: plain_mmd64(a, b, PAPER_VARIANCES, True), x.double(), y.double()
    )
    assert calls == {"direct": [11], "pairs": []}
    for g_, w in zip(got, want):
        torch.testing.assert_close(g_, w.float(), rtol=1e-3, atol=1e-4)


def test_bright_outlier_pairs_are_fixed_alone(monkeypatch):
    """Two bright points with similar features (large norms, moderate distance): only their
    pair needs exact differences under the median set."""
    calls = _spy_routes(monkeypatch)
    x, y = _samples(15, 24, 24, 64, shift=0.2, scale=3.0)
    bright = 400.0 * torch.ones(64)
    x[0], y[0] = bright + x[0], bright + x[0] + 0.5 * y[0]
    loss = MMDLoss(bandwidths="median")
    got = _value_and_grads(loss, x, y)
    s = median_variances(x.double(), y.double())
    want = _value_and_grads(
        lambda a, b: plain_mmd64(a, b, s.tolist(), True), x.double(), y.double()
    )
    assert calls["direct"] == [] and calls["pairs"] and max(calls["pairs"]) <= 3
    for g_, w in zip(got, want):
        torch.testing.assert_close(g_, w.float(), rtol=1e-3, atol=1e-6)


def test_paper_set_keeps_fast_distances_when_tiny_kernels_vanish(monkeypatch):
    """Without close pairs every tiny-variance term is exactly 0 both ways: no direct pass."""
    calls = _spy_routes(monkeypatch)
    x, y = _features_like_deepmerge(10, 16, d=256), _features_like_deepmerge(11, 16, d=256)
    got = _value_and_grads(lambda a, b: multi_kernel_mmd(a, b, PAPER_VARIANCES, False), x, y)
    want = _value_and_grads(
        lambda a, b: plain_mmd64(a, b, PAPER_VARIANCES, False), x.double(), y.double()
    )
    assert calls == FAST_ONLY
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.float(), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", ["centred", "relu", "clustered", "outliers", "scales"])
@pytest.mark.parametrize("d", [4, 300, 2592])
def test_expansion_error_stays_below_bound(kind, d):
    g = torch.Generator().manual_seed(d)
    z = torch.randn(96, d, generator=g)
    if kind == "outliers":
        z[:4] *= 50
    z = {
        "relu": torch.relu(z) * 3,
        "clustered": 5 + 0.01 * z,
        "scales": z * torch.logspace(-2, 2, 96)[:, None],
    }.get(kind, z)
    fast = losses_module._GramSquaredDistances.apply(z).double()
    exact = (z.double()[:, None] - z.double()[None]).pow(2).sum(-1)
    assert ((fast - exact).abs() <= expansion_error_bound(z)).all()
    assert torch.equal(fast.diagonal(), torch.zeros(96, dtype=torch.float64))
    assert (fast >= 0).all()


def test_centring_keeps_far_from_origin_features_on_the_fast_path(monkeypatch):
    """Features sharing a large common part (‖z‖² ≫ distances², as after ReLU) stay accurate."""
    calls = _spy_routes(monkeypatch)
    x, y = _samples(14, 20, 20, 64, shift=0.3)
    x, y = x + 300.0, y + 300.0
    got = _value_and_grads(lambda a, b: multi_kernel_mmd(a, b, (8.0, 32.0, 128.0)), x, y)
    want = _value_and_grads(
        lambda a, b: plain_mmd64(a, b, (8.0, 32.0, 128.0), True), x.double(), y.double()
    )
    assert calls == FAST_ONLY
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.float(), rtol=1e-3, atol=1e-6)


def test_coincident_points_and_half_precision_under_autocast():
    x, y = _samples(12, 8, 8, 5, shift=0.3)
    x[2] = x[5]
    got = _value_and_grads(lambda a, b: multi_kernel_mmd(a, b, (0.5, 3.0), False), x, y)
    want = _value_and_grads(
        lambda a, b: plain_mmd64(a, b, (0.5, 3.0), False), x.double(), y.double()
    )
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w.float(), rtol=2e-4, atol=2e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = MMDLoss(bandwidths="paper")(x.bfloat16(), y.bfloat16())
    assert half.dtype == torch.float32
    ref = plain_mmd64(x.bfloat16().double(), y.bfloat16().double(), PAPER_VARIANCES, True)
    torch.testing.assert_close(half, ref.float(), rtol=1e-4, atol=1e-5)


def test_distance_modes_agree_and_bad_mode_rejected():
    x, y = _samples(13, 10, 7, 4, shift=0.2)
    values = [MMDLoss("median", distances=m)(x, y) for m in ("auto", "matmul", "direct")]
    for v in values[1:]:
        torch.testing.assert_close(v, values[0], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="auto"):
        MMDLoss(distances="fast")
    with pytest.raises(ValueError, match="auto"):
        multi_kernel_mmd(x, y, (1.0,), distances="fast")


# --------------------------------------------------------------------------- MMD behaviour


@pytest.mark.parametrize("bandwidths", ["median", "paper"])
def test_mmd_near_zero_same_distribution_positive_when_shifted(bandwidths):
    loss = MMDLoss(bandwidths=bandwidths, unbiased=True)
    same = torch.stack([loss(*_samples(seed, 32, 40, 8)) for seed in range(20)])
    shifted = torch.stack([loss(*_samples(seed, 32, 40, 8, shift=1.0)) for seed in range(20)])
    assert abs(same.mean().item()) < 3 * same.std().item() / math.sqrt(len(same)) + 1e-3
    assert (same < 0).any()  # unbiased estimate is not clamped
    assert shifted.min() > same.max()
    assert shifted.mean() > 10 * same.abs().mean()


@pytest.mark.parametrize("bandwidths", ["median", "paper"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_gradient_finite_and_nonzero(bandwidths, unbiased):
    x, y = _samples(3, 16, 12, 6, shift=0.5)
    x.requires_grad_(True)
    y.requires_grad_(True)
    MMDLoss(bandwidths=bandwidths, unbiased=unbiased)(x, y).backward()
    for g in (x.grad, y.grad):
        assert torch.isfinite(g).all()
        assert g.abs().sum() > 0


def test_median_variances_no_grad_and_scale_with_data():
    x, y = _samples(4, 10, 14, 5)
    x.requires_grad_(True)
    s = median_variances(x, y, n_kernels=5, multiplier=2.0)
    assert not s.requires_grad and s.grad_fn is None
    assert s.shape == (5,)
    torch.testing.assert_close(s[1:] / s[:-1], torch.full((4,), 2.0))
    pooled = torch.cat([x, y]).detach()
    d2 = torch.cdist(pooled, pooled).pow(2)
    median = d2[torch.triu_indices(24, 24, 1).unbind()].median()
    torch.testing.assert_close(s[2], median)  # centred on the median
    s10 = median_variances(10 * x, 10 * y, n_kernels=5, multiplier=2.0)
    torch.testing.assert_close(s10, 100 * s, rtol=1e-4, atol=0)


def test_mmd_rejects_bad_config():
    with pytest.raises(ValueError, match="median"):
        MMDLoss(bandwidths="silverman")
    with pytest.raises(ValueError):
        multi_kernel_mmd(torch.randn(1, 3), torch.randn(4, 3), (1.0,), unbiased=True)


# --------------------------------------------------------------------------- gradient reversal


@pytest.mark.parametrize("coefficient", [1.0, 0.37, 2.5])
def test_gradient_reversal_scales_feature_gradient_only(coefficient):
    torch.manual_seed(0)
    extractor = nn.Linear(5, 8)
    discriminator = DomainDiscriminator(8, hidden=16, dropout=0.0)
    x_s, x_t = torch.randn(6, 5), torch.randn(7, 5)

    def grads(reverse: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        extractor.zero_grad()
        discriminator.zero_grad()
        f_s, f_t = extractor(x_s), extractor(x_t)
        if reverse:
            f_s, f_t = grad_reverse(f_s, coefficient), grad_reverse(f_t, coefficient)
        loss, _ = domain_adversarial_loss(discriminator(f_s), discriminator(f_t))
        loss.backward()
        return (
            [p.grad.clone() for p in extractor.parameters()],
            [p.grad.clone() for p in discriminator.parameters()],
        )

    ext_plain, disc_plain = grads(reverse=False)
    ext_rev, disc_rev = grads(reverse=True)
    for plain, rev in zip(ext_plain, ext_rev):
        assert plain.abs().sum() > 0
        torch.testing.assert_close(rev, -coefficient * plain, rtol=1e-6, atol=1e-7)
    for plain, rev in zip(disc_plain, disc_rev):
        torch.testing.assert_close(rev, plain, rtol=0, atol=0)


def test_gradient_reversal_forward_is_identity():
    x = torch.randn(3, 4, requires_grad=True)
    out = grad_reverse(x, 0.5)
    assert torch.equal(out, x)


def test_ganin_schedule():
    assert ganin_coefficient(0.0) == 0.0
    assert ganin_coefficient(-1.0) == 0.0  # clipped
    assert ganin_coefficient(1.0, gamma=10.0, max_value=0.5) == pytest.approx(0.5, abs=1e-4)
    assert ganin_coefficient(2.0) == ganin_coefficient(1.0)  # clipped
    values = [ganin_coefficient(p / 50) for p in range(51)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert ganin_coefficient(0.3, gamma=10.0) == pytest.approx(2 / (1 + math.exp(-3)) - 1)


def test_reversal_coefficient_dispatch():
    assert reversal_coefficient("constant", 0.0, 10.0, 0.7) == 0.7
    assert reversal_coefficient("ganin", 0.2, 10.0, 0.7) == ganin_coefficient(0.2, 10.0, 0.7)
    with pytest.raises(ValueError, match="constant.*ganin"):
        reversal_coefficient("linear", 0.5, 10.0, 1.0)


def test_domain_adversarial_loss_labels_and_accuracy():
    src, tgt = torch.tensor([3.0, -1.0]), torch.tensor([-2.0, -4.0, 0.5])
    loss, acc = domain_adversarial_loss(src, tgt)
    # Eq. 4 by hand: mean of −log σ(z) over source plus mean of −log(1 − σ(z)) over target
    sig = torch.sigmoid
    expected = -torch.log(sig(src)).mean() - torch.log(1 - sig(tgt)).mean()
    torch.testing.assert_close(loss, expected)
    assert acc.item() == pytest.approx(3 / 5)
    assert not acc.requires_grad


# --------------------------------------------------------------------------- DeepMerge II


def test_fisher_loss_gradients_and_separation():
    torch.manual_seed(0)
    fisher = FisherLoss(feat_dim=4, n_classes=2)
    with torch.no_grad():
        fisher.centers.copy_(torch.tensor([[-3.0, 0, 0, 0], [3.0, 0, 0, 0]]))
    labels = torch.tensor([0] * 20 + [1] * 20)
    noise = 0.3 * torch.randn(40, 4)
    separated = fisher.centers.detach()[labels] + noise
    mixed = fisher.centers.detach()[labels.flip(0)[torch.randperm(40)]] + noise
    feats = separated.clone().requires_grad_(True)
    loss = fisher(feats, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert feats.grad.abs().sum() > 0 and fisher.centers.grad.abs().sum() > 0
    assert loss.item() < 0.1 * fisher(mixed, labels).item()


def test_entropy_loss():
    confident = torch.tensor([[100.0, -100.0], [-100.0, 100.0]])
    assert entropy_loss(confident).item() == pytest.approx(0.0, abs=1e-6)
    assert entropy_loss(torch.zeros(5, 2)).item() == pytest.approx(math.log(2))
    assert entropy_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4))


# --------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("in_features,hidden", [(32, 1024), (7, 16)])
def test_discriminator_shape_and_parameter_count(in_features, hidden):
    disc = DomainDiscriminator(in_features, hidden=hidden)
    out = disc(torch.randn(5, in_features))
    assert out.shape == (5,)
    n_params = sum(p.numel() for p in disc.parameters())
    assert n_params == in_features * hidden + hidden + hidden * hidden + hidden + hidden + 1
    dropouts = [m for m in disc.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 2 and all(m.p == 0.5 for m in dropouts)
