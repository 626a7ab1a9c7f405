"""CDAN(+E), MCC, Deep CORAL and self-training (issue 18): each loss against a plain reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from galda.losses import (
    ConditionalMap,
    RandomizedMultilinearMap,
    confident_pseudo_label_loss,
    coral_loss,
    domain_adversarial_loss,
    entropy_weights,
    grad_reverse,
    minimum_class_confusion,
    multilinear_map,
    weighted_domain_adversarial_loss,
)
from galda.models.discriminator import DomainDiscriminator


def _rand(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).double()


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    for i, row in enumerate(z):
        e = [math.exp(v - max(row)) for v in row]
        out[i] = [v / sum(e) for v in e]
    return out


def _entropy_row(p) -> float:
    return -sum(v * math.log(v) for v in p if v > 0)


# ------------------------------------------------------------------------------------ CDAN


def test_multilinear_map_is_the_flattened_outer_product():
    f, g = _rand(5, 7, seed=1), _rand(5, 3, seed=2).softmax(1)
    out = multilinear_map(f, g).numpy()
    assert out.shape == (5, 21)
    for i in range(5):
        expected = [f[i, d].item() * g[i, c].item() for d in range(7) for c in range(3)]
        np.testing.assert_allclose(out[i], expected, rtol=1e-12)


def test_randomized_map_matches_numpy_and_preserves_inner_products():
    torch.manual_seed(0)
    f, g = _rand(4, 6, seed=3), _rand(4, 2, seed=4).softmax(1)
    rmap = RandomizedMultilinearMap(6, 2, output_dim=8).double()
    r_f, r_g = rmap.r_features.numpy(), rmap.r_classes.numpy()
    expected = (f.numpy() @ r_f) * (g.numpy() @ r_g) / math.sqrt(8)
    np.testing.assert_allclose(rmap(f, g).numpy(), expected, rtol=1e-12)

    # E<T(f,g), T(f',g')> = <f⊗g, f'⊗g'>: with a wide map the Gram matrices agree closely
    wide = RandomizedMultilinearMap(6, 2, output_dim=200_000).double()
    t, full = wide(f, g), multilinear_map(f, g)
    gram_t, gram_full = (t @ t.T).numpy(), (full @ full.T).numpy()
    assert np.abs(gram_t - gram_full).max() < 0.05 * np.abs(gram_full).max()


def test_conditional_map_switches_to_the_randomized_map_above_4096():
    torch.manual_seed(0)
    small = ConditionalMap(feature_dim=2048, n_classes=2)  # 4096: full outer product
    assert not small.randomized and small.output_dim == 4096 and not list(small.buffers())
    deepmerge = ConditionalMap(feature_dim=2592, n_classes=2)  # 5184 > 4096
    assert deepmerge.randomized and deepmerge.output_dim == 1024
    out = deepmerge(torch.randn(3, 2592), torch.rand(3, 2).softmax(1))
    assert out.shape == (3, 1024)
    # memory stays small: fixed matrices (2592 + 2) × 1024 and a discriminator reading 1024 inputs
    buffers = sum(b.numel() for b in deepmerge.buffers())
    assert buffers == (2592 + 2) * 1024
    disc = DomainDiscriminator(deepmerge.output_dim)
    assert sum(p.numel() for p in disc.parameters()) + buffers < 5_000_000  # < 20 MB float32
    assert set(deepmerge.state_dict()) == {"random_map.r_features", "random_map.r_classes"}


def test_entropy_weights_match_the_formula():
    p = _rand(6, 3, seed=5).softmax(1)
    p[0] = torch.tensor([1.0, 0.0, 0.0], dtype=p.dtype)  # 0·log 0 = 0, weight 2
    w = entropy_weights(p).numpy()
    expected = [1 + math.exp(-_entropy_row(row)) for row in p.tolist()]
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    assert w[0] == pytest.approx(2.0)
    assert entropy_weights(torch.full((1, 4), 0.25)).item() == pytest.approx(1.25)


def _reference_weighted_bce(d_s, d_t, w_s, w_t) -> float:
    def bce(logit: float, y: int) -> float:
        p = 1 / (1 + math.exp(-logit))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    total = 0.0
    for logits, weights, y in ((d_s, w_s, 1), (d_t, w_t, 0)):
        total += sum(w * bce(z, y) for z, w in zip(logits, weights, strict=True)) / sum(weights)
    return total


def test_weighted_domain_loss_matches_reference_and_reduces_to_dann():
    d_s, d_t = _rand(5, seed=6), _rand(3, seed=7)
    w_s, w_t = torch.rand(5, dtype=torch.float64) + 1, torch.rand(3, dtype=torch.float64) + 1
    loss, acc = weighted_domain_adversarial_loss(d_s, d_t, w_s, w_t)
    ref = _reference_weighted_bce(d_s.tolist(), d_t.tolist(), w_s.tolist(), w_t.tolist())
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    expected_acc = ((d_s > 0).sum() + (d_t <= 0).sum()).item() / 8
    assert acc.item() == pytest.approx(expected_acc)
    plain, _ = domain_adversarial_loss(d_s, d_t)
    unweighted, _ = weighted_domain_adversarial_loss(d_s, d_t)
    assert unweighted.item() == pytest.approx(plain.item(), rel=1e-12)
    # per-domain normalisation: scaling one domain's weights changes nothing
    scaled, _ = weighted_domain_adversarial_loss(d_s, d_t, 7.0 * w_s, w_t)
    assert scaled.item() == pytest.approx(loss.item(), rel=1e-12)


def test_cdan_gradient_reaches_the_classifier_through_the_conditioning():
    """The reversed domain-loss gradient flows into the logits via g = softmax(logits)."""
    torch.manual_seed(0)
    feats = torch.randn(8, 5, requires_grad=True)
    logits = torch.randn(8, 2, requires_grad=True)
    cmap, disc = ConditionalMap(5, 2), DomainDiscriminator(10, hidden=16, dropout=0.0)

    def loss_with(coefficient: float) -> torch.Tensor:
        probs = logits.softmax(1)
        h = grad_reverse(cmap(feats, probs), coefficient)
        d = disc(h)
        return weighted_domain_adversarial_loss(d[:4], d[4:], *entropy_weights(probs).split(4))[0]

    grad_plain = torch.autograd.grad(loss_with(-1.0), logits)[0]  # reversal by −1: plain gradient
    grad_reversed = torch.autograd.grad(loss_with(0.5), logits)[0]
    assert grad_plain.abs().sum() > 0
    torch.testing.assert_close(grad_reversed, -0.5 * grad_plain)


# ------------------------------------------------------------------------------------- MCC


def _reference_mcc(logits: np.ndarray, temperature: float) -> float:
    p = _softmax_rows(logits / temperature)
    n, c = p.shape
    w = np.array([1 + math.exp(-_entropy_row(row)) for row in p])
    w = n * w / w.sum()
    conf = np.zeros((c, c))
    for j in range(c):
        for k in range(c):
            conf[j, k] = sum(p[i, j] * w[i] * p[i, k] for i in range(n))
    for j in range(c):
        conf[j] /= conf[j].sum()
    return sum(conf[j, k] for j in range(c) for k in range(c) if j != k) / c


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_mcc_matches_reference(n_classes, temperature):
    logits = _rand(9, n_classes, seed=8, scale=3.0)
    got = minimum_class_confusion(logits, temperature).item()
    assert got == pytest.approx(_reference_mcc(logits.numpy(), temperature), rel=1e-5)


def test_mcc_is_small_for_confident_distinct_predictions_and_trains_them_apart():
    sharp = torch.tensor([[20.0, -20.0]] * 4 + [[-20.0, 20.0]] * 4)
    assert minimum_class_confusion(sharp, temperature=1.0).item() < 1e-6
    logits = torch.zeros(6, 2, requires_grad=True)
    with torch.no_grad():
        logits += 0.1 * torch.randn(6, 2)
    minimum_class_confusion(logits).backward()
    assert logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------- CORAL


def test_coral_matches_numpy_covariances():
    xs, xt = _rand(10, 4, seed=9), _rand(7, 4, seed=10, scale=2.0) + 1.0
    d = 4
    cs, ct = np.cov(xs.numpy(), rowvar=False, ddof=1), np.cov(xt.numpy(), rowvar=False, ddof=1)
    expected = sum((cs[i, j] - ct[i, j]) ** 2 for i in range(d) for j in range(d)) / (4 * d * d)
    assert coral_loss(xs, xt).item() == pytest.approx(expected, rel=1e-5)


def test_coral_ignores_means_and_flattens():
    xs, xt = _rand(6, 2, 3, seed=11), _rand(6, 2, 3, seed=12)
    assert coral_loss(xs, xs + 5.0).item() == pytest.approx(0.0, abs=1e-6)
    assert coral_loss(xs, xt).item() == pytest.approx(
        coral_loss(xs.reshape(6, -1), xt.reshape(6, -1)).item()
    )
    with pytest.raises(ValueError):
        coral_loss(xs[:1], xt)


# ------------------------------------------------------------------------------ self-training


def _reference_pseudo_label_loss(logits: np.ndarray, threshold: float) -> tuple[float, list[bool]]:
    p = _softmax_rows(logits)
    per_class: dict[int, list[float]] = {}
    mask = []
    for row in p:
        k = int(np.argmax(row))
        mask.append(bool(row[k] > threshold))
        if mask[-1]:
            per_class.setdefault(k, []).append(-math.log(row[k]))
    if not per_class:
        return 0.0, mask
    return sum(sum(v) / len(v) for v in per_class.values()) / len(per_class), mask


@pytest.mark.parametrize("threshold", [0.6, 0.8, 0.95])
def test_pseudo_label_loss_matches_reference(threshold):
    logits = _rand(20, 3, seed=13, scale=2.5)
    loss, mask, pseudo = confident_pseudo_label_loss(logits, threshold)
    ref, ref_mask = _reference_pseudo_label_loss(logits.numpy(), threshold)
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    assert mask.tolist() == ref_mask and 0 < sum(ref_mask) < 20
    assert pseudo.tolist() == logits.argmax(1).tolist()


def test_pseudo_label_loss_balances_classes_and_is_zero_without_confident_samples():
    # nine confident class-0 images and one confident class-1 image: both classes weigh 1/2
    logits = torch.tensor([[3.0, 0.0]] * 9 + [[0.0, 1.5]], requires_grad=True)
    loss, mask, _ = confident_pseudo_label_loss(logits, threshold=0.7)
    ce0 = F.cross_entropy(logits[:1], torch.tensor([0]))
    ce1 = F.cross_entropy(logits[9:], torch.tensor([1]))
    assert mask.all() and loss.item() == pytest.approx(0.5 * (ce0 + ce1).item())
    unsure = torch.zeros(4, 2, requires_grad=True)
    loss, mask, _ = confident_pseudo_label_loss(unsure, threshold=0.9)
    assert loss.item() == 0.0 and not mask.any() and loss.requires_grad


# ----------------------------------------------------------------------------------- report


def test_table1_and_figure1_take_any_set_of_methods(tmp_path, monkeypatch):
    from galda.report import build_report
    from galda.report.collect import method_label
    from galda.report.figures import COLORS, method_color
    from tests import test_report

    methods = ["selftrain", "zz_new", "mcc", "baseline", "cdan", "coral", "dann"]
    for method in methods:
        monkeypatch.setitem(test_report.QUALITY, method, (1.1, 0.6))
        for seed in (1, 2):
            test_report.write_run(tmp_path / "runs", "small", "deepmerge", method, seed)
    rep = build_report([tmp_path / "runs"], tmp_path / "out")
    order = ["baseline", "dann", "coral", "cdan", "mcc", "selftrain", "zz_new"]
    labels = [method_label(m, False) for m in order]
    rows = [
        line.split("|")[1].strip()
        for line in rep["markdown"].splitlines()
        if line.startswith("| ") and not line.startswith("| Method")
    ]
    assert rows == labels
    assert (tmp_path / "out" / "figure1.png").stat().st_size > 0
    # one colour per known method, stable for an unknown one whatever else is present
    known = [method_color(m, False) for m in COLORS]
    assert len(set(known)) == len(known)
    assert method_color("zz_new", False) == method_color("zz_new", False) not in known


# ------------------------------------------------------------------------- the method modules

NEW_METHODS = ("cdan", "mcc", "coral", "selftrain")


def _outputs(net, x):
    from galda.methods.base import StepOutputs

    features, logits = net(x)
    return StepOutputs(features=features, logits=logits)


def test_cdan_module_sends_the_domain_gradient_into_the_classifier_head():
    """TinyNet's head only shapes the logits, so its gradient must come through g = softmax."""
    from galda.methods import CDANClassifier
    from galda.models import TinyNet

    torch.manual_seed(0)
    module = CDANClassifier(TinyNet(), schedule="constant", discriminator_hidden=16)
    x = torch.randn(12, 3, 16, 16)
    loss, logs = module.transfer_loss(_outputs(module.net, x[:6]), _outputs(module.net, x[6:] + 2))
    loss.backward()
    assert module.net.head.weight.grad.abs().sum() > 0
    assert not module.conditional_map.randomized and module.conditional_map.output_dim == 64 * 2
    assert set(logs) == {"train/domain_acc", "train/grl_coefficient"}


@pytest.mark.parametrize(
    ("model", "randomized", "width"), [("deepmerge", True, 1024), ("resnet18", False, 512)]
)
def test_cdan_uses_the_randomized_map_for_deepmerge_only(compose_cfg, model, randomized, width):
    from galda.train import build_module

    module = build_module(compose_cfg(f"model={model}", "method=cdan"))
    assert module.conditional_map.randomized is randomized
    assert module.discriminator.net[0].in_features == width


def test_selftraining_waits_for_the_warmup():
    from galda.methods import SelfTrainingClassifier
    from galda.models import TinyNet

    torch.manual_seed(0)
    x = torch.randn(16, 3, 16, 16)
    for warmup, active in ((0.5, False), (0.0, True)):
        module = SelfTrainingClassifier(TinyNet(), threshold=0.0, warmup=warmup)
        outputs = _outputs(module.net, x)
        loss, logs = module.transfer_loss(outputs, outputs)
        assert (loss.item() > 0) is active and float(logs["train/pseudo_active"]) == float(active)
        assert logs["train/pseudo_fraction"].item() == 1.0


@pytest.mark.parametrize("method", NEW_METHODS)
@pytest.mark.parametrize("model", ["tiny", "deepmerge", "resnet18"])
def test_new_method_runs_fast_dev_run(compose_cfg, sim_data_dir, model, method):
    from galda.train import train

    cfg = compose_cfg(
        "data=tiny",
        f"paths.data_dir={sim_data_dir}",
        f"model={model}",
        f"method={method}",
        "trainer.fast_dev_run=true",
        "logger=none",
    )
    results = train(cfg)
    assert results["status"] == "smoke"
    assert results["method"] == method and results["uses_target_labels"] is False
    assert 0.0 <= results["test/target/acc"] <= 1.0


@pytest.mark.parametrize(
    "override",
    [
        "method=cdan method.module.schedule=bogus",
        "method=mcc method.module.temperature=0",
        "method=selftrain method.module.threshold=1.5",
        "method=selftrain method.module.warmup=2",
    ],
)
def test_bad_method_settings_are_user_errors(compose_cfg, override):
    from galda.errors import GaldaError
    from galda.train import build_module

    key = override.split()[1].split("=")[0]
    with pytest.raises(GaldaError, match=key.replace(".", r"\.")):
        build_module(compose_cfg("model=tiny", *override.split()))


def test_cdan_checkpoint_restores_the_random_map(tmp_path):
    """The randomised map's fixed matrices travel in the checkpoint (load needs no arguments)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from galda.methods import CDANClassifier
    from tests.test_methods import _Paired

    pl.seed_everything(0)
    net = {"_target_": "galda.models.TinyNet", "in_channels": 3}
    module = CDANClassifier(net, randomized_threshold=0, randomized_dim=32, discriminator_hidden=8)
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(_Paired(n=16), batch_size=8))
    trainer.save_checkpoint(tmp_path / "cdan.ckpt")
    pl.seed_everything(1)
    loaded = CDANClassifier.load_from_checkpoint(tmp_path / "cdan.ckpt")
    assert loaded.conditional_map.randomized and loaded.conditional_map.output_dim == 32
    for name in ("r_features", "r_classes"):
        saved = getattr(module.conditional_map.random_map, name)
        assert torch.equal(getattr(loaded.conditional_map.random_map, name), saved)
