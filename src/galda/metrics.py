"""Binary classification metrics for galaxy-merger predictions (the single metrics module).

All functions take ``probs`` = P(merger) of shape (N,) and integer ``labels`` in {0, 1}; both may be
torch tensors, numpy arrays or lists. Values come from :mod:`torchmetrics.functional` and agree with
scikit-learn's (see ``tests/test_metrics.py``).

- :func:`binary_metrics` -> ``{"acc", "precision", "recall", "f1", "brier", "auroc"}`` (floats)
- :func:`binary_confusion` -> ``[[tn, fp], [fn, tp]]``
- :func:`binary_roc` -> ``(fpr, tpr)`` numpy arrays

A sample is predicted a merger when ``p > threshold`` (torchmetrics' convention).

Degenerate inputs never raise: with one class present AUROC is ``nan`` (and the ROC curve has a
``nan`` axis); with no samples every metric is ``nan``; precision/F1 with no predicted positives are 0
(scikit-learn's ``zero_division=0``); non-finite probs give ``nan`` metrics with a warning
(``binary_confusion``/``binary_roc`` raise on them). Probabilities outside [0, 1] raise, because
torchmetrics would otherwise silently treat them as logits.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_confusion_matrix,
    binary_f1_score,
    binary_precision,
    binary_recall,
)
from torchmetrics.functional.classification import binary_roc as _tm_binary_roc

__all__ = [
    "METRIC_NAMES",
    "NamedMeans",
    "binary_confusion",
    "binary_metrics",
    "binary_roc",
    "metric_collection",
]

#: Order of the metric keys in :func:`binary_metrics` (also the order of Figure 1's bars).
METRIC_NAMES: tuple[str, ...] = ("acc", "precision", "recall", "f1", "brier", "auroc")


def metric_collection(prefix: str = "", names: Sequence[str] = METRIC_NAMES) -> MetricCollection:
    """The same metrics as torchmetrics objects, ``update(probs, labels)``, for a LightningModule.

    Lightning reduces their states at the epoch's end (across processes too). Brier score is the
    mean squared error between P(merger) and the label.
    """
    factories = {
        "acc": BinaryAccuracy,
        "precision": BinaryPrecision,
        "recall": BinaryRecall,
        "f1": BinaryF1Score,
        "brier": MeanSquaredError,
        "auroc": BinaryAUROC,
    }
    unknown = sorted(set(names) - set(factories))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(factories)}")
    return MetricCollection({n: factories[n]() for n in names}, prefix=prefix)


class NamedMeans(Metric):
    """Weighted epoch means of a fixed set of named scalars: mean_k = Σ_b w_b v_bk / Σ_b w_b.

    One ``update`` per training step stacks every value into one vector (a few kernel launches,
    no host synchronisation), where ``LightningModule.log(on_epoch=True)`` spends Python time per
    key per step. The names are fixed by the first update; states are summed across processes.
    """

    full_state_update = False
    total: torch.Tensor
    weight: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.names: tuple[str, ...] = ()
        self.add_state("total", default=torch.zeros(0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.zeros(()), dist_reduce_fx="sum")

    def update(self, values: dict[str, torch.Tensor], weight: float = 1.0) -> None:
        names = tuple(values)
        if not self.names:
            self.names = names
        elif names != self.names:
            raise ValueError(f"NamedMeans got keys {list(names)}, expected {list(self.names)}")
        stacked = torch.stack(
            [v.detach().to(self.total.dtype).reshape(()) for v in values.values()]
        )
        if self.total.numel() != stacked.numel():  # first update after a reset
            self.total = torch.zeros_like(stacked)
        self.total += stacked * weight
        self.weight += weight

    def compute(self) -> dict[str, torch.Tensor]:
        means = self.total / self.weight
        return {name: means[i] for i, name in enumerate(self.names)}


def _prepare(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.as_tensor(np.asarray(probs) if not isinstance(probs, torch.Tensor) else probs)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    p = p.detach().reshape(-1).to("cpu", torch.float64)
    y = y.detach().reshape(-1).to("cpu").long()
    if p.shape != y.shape:
        raise ValueError(f"probs and labels differ in length: {p.numel()} vs {y.numel()}")
    if y.numel() and not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels must be 0 or 1")
    finite = p[torch.isfinite(p)]
    if finite.numel() and (float(finite.min()) < 0.0 or float(finite.max()) > 1.0):
        raise ValueError("probs must be probabilities in [0, 1] (apply softmax/sigmoid first)")
    return p, y


def _require_finite(p: torch.Tensor) -> None:
    if not bool(torch.isfinite(p).all()):
        raise ValueError("probs contain NaN or inf")


def binary_metrics(probs: Any, labels: Any, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive class = merger), Brier score and ROC AUC."""
    p, y = _prepare(probs, labels)
    if y.numel() == 0:
        return {k: math.nan for k in METRIC_NAMES}
    if not bool(torch.isfinite(p).all()):  # a diverged model: report nan rather than crash the job
        warnings.warn("probs contain NaN/inf; all metrics are nan", RuntimeWarning, stacklevel=2)
        return {k: math.nan for k in METRIC_NAMES}
    kw: dict[str, Any] = {"threshold": threshold}
    out = {
        "acc": float(binary_accuracy(p, y, **kw)),
        "precision": float(binary_precision(p, y, **kw)),
        "recall": float(binary_recall(p, y, **kw)),
        "f1": float(binary_f1_score(p, y, **kw)),
        "brier": float(torch.mean((p - y.to(p.dtype)) ** 2)),
    }
    n_pos = int(y.sum())
    if 0 < n_pos < y.numel():
        out["auroc"] = float(binary_auroc(p, y))
    else:
        out["auroc"] = math.nan
    return out


def binary_confusion(probs: Any, labels: Any, threshold: float = 0.5) -> list[list[int]]:
    """Confusion matrix ``[[tn, fp], [fn, tp]]`` (rows = true class, columns = predicted class)."""
    p, y = _prepare(probs, labels)
    _require_finite(p)
    if y.numel() == 0:
        return [[0, 0], [0, 0]]
    cm = binary_confusion_matrix(p, y, threshold=threshold)
    return [[int(v) for v in row] for row in cm.tolist()]


def binary_roc(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)`` as float numpy arrays, starting at (0, 0) and ending at (1, 1).

    With one class present the undefined axis is ``nan`` (no exception).
    """
    p, y = _prepare(probs, labels)
    _require_finite(p)
    if y.numel() == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]) * math.nan
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.numel():
        thresholds = np.unique(p.numpy())[::-1]
        pred_pos = np.array([0] + [(p.numpy() >= t).sum() for t in thresholds], dtype=float)
        frac = pred_pos / y.numel()
        nan = np.full_like(frac, math.nan)
        return (nan, frac) if n_pos == y.numel() else (frac, nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fpr, tpr, _ = _tm_binary_roc(p, y)
    return fpr.numpy().astype(np.float64), tpr.numpy().astype(np.float64)
