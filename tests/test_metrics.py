"""galda.metrics agrees with scikit-learn on the same predictions."""

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from galda.metrics import METRIC_NAMES, binary_confusion, binary_metrics, binary_roc


def _fake(seed: int, n: int = 200, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)
    if ties:
        p = np.round(p, 1)
    return p, y


@pytest.mark.parametrize("seed,ties,threshold", [(0, False, 0.5), (1, True, 0.5), (2, False, 0.3)])
def test_binary_metrics_match_sklearn(seed, ties, threshold):
    p, y = _fake(seed, ties=ties)
    m = binary_metrics(torch.tensor(p, dtype=torch.float32), torch.tensor(y), threshold=threshold)
    assert set(m) == set(METRIC_NAMES)
    assert all(isinstance(v, float) for v in m.values())
    # torchmetrics calls a prediction positive when p > threshold (ties at the threshold -> negative)
    pred = (p.astype(np.float32) > threshold).astype(int)
    assert m["acc"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0), abs=1e-6)
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0), abs=1e-6)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0), abs=1e-6)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p.astype(np.float32)), abs=1e-6)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p.astype(np.float32)), abs=1e-6)


def test_confusion_matches_sklearn():
    p, y = _fake(3)
    cm = binary_confusion(p, y)
    pred = (p > 0.5).astype(int)
    assert cm == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    (tn, fp), (fn, tp) = cm
    assert tn + fp + fn + tp == len(y)
    assert binary_metrics(p, y)["acc"] == pytest.approx((tn + tp) / len(y))


@pytest.mark.parametrize("ties", [False, True])
def test_roc_matches_sklearn(ties):
    p, y = _fake(4, ties=ties)
    fpr, tpr = binary_roc(torch.tensor(p), torch.tensor(y))
    assert isinstance(fpr, np.ndarray) and isinstance(tpr, np.ndarray)
    assert fpr.shape == tpr.shape
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, p)
    assert skm.auc(fpr, tpr) == pytest.approx(skm.auc(sk_fpr, sk_tpr), abs=1e-6)
    assert skm.auc(fpr, tpr) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
    # every sklearn operating point lies on our curve
    dist = np.hypot(sk_fpr[:, None] - fpr[None, :], sk_tpr[:, None] - tpr[None, :]).min(axis=1)
    assert dist.max() < 1e-6


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_does_not_crash(label):
    p = np.linspace(0.1, 0.9, 9)
    y = np.full(9, label)
    m = binary_metrics(p, y)
    assert math.isnan(m["auroc"])
    pred = (p > 0.5).astype(int)
    assert m["acc"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["brier"] == pytest.approx(
        skm.brier_score_loss(y, p, pos_label=1) if label else np.mean(p**2)
    )
    cm = binary_confusion(p, y)
    assert sum(map(sum, cm)) == 9
    fpr, tpr = binary_roc(p, y)
    assert fpr.shape == tpr.shape


def test_degenerate_inputs():
    m = binary_metrics(torch.empty(0), torch.empty(0, dtype=torch.long))
    assert all(math.isnan(v) for v in m.values())
    with pytest.warns(RuntimeWarning):
        m = binary_metrics(torch.tensor([0.2, float("nan")]), torch.tensor([0, 1]))
    assert all(math.isnan(v) for v in m.values())
    with pytest.raises(ValueError, match="probabilities"):
        binary_metrics(torch.tensor([-2.0, 3.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics(torch.tensor([0.2, 0.3]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="length"):
        binary_metrics(torch.tensor([0.2, 0.3]), torch.tensor([0]))
    # all predicted negative: precision/F1 are 0 like sklearn's zero_division=0
    m = binary_metrics(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 1]))
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["recall"] == 0.0


def test_named_means_match_a_plain_weighted_mean():
    from galda.metrics import NamedMeans

    gen = torch.Generator().manual_seed(0)
    steps = [(torch.rand(3, generator=gen), float(w)) for w in (128, 128, 64)]
    means = NamedMeans()
    for values, w in steps:
        means.update({"a": values[0], "b": values[1], "c": values[2]}, weight=w)
    got = means.compute()
    total_w = sum(w for _, w in steps)
    for i, key in enumerate("abc"):
        expected = sum(float(v[i]) * w for v, w in steps) / total_w
        assert float(got[key]) == pytest.approx(expected, rel=1e-6)
    means.reset()  # a new epoch starts from nothing, with the same names
    means.update({"a": torch.tensor(2.0), "b": torch.tensor(4.0), "c": torch.tensor(6.0)})
    assert [float(v) for v in means.compute().values()] == [2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="keys"):
        means.update({"a": torch.tensor(1.0)})
