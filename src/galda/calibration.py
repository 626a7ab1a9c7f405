"""Calibrated probabilities: temperature scaling, expected calibration error, reliability diagrams.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", ICML,
arXiv:1706.04599) divides the logits ``z`` by one scalar ``T > 0`` fitted by minimising the
negative log-likelihood on held-out labelled data::

    T* = argmin_T  -1/N Σ_i log softmax(z_i / T)[y_i]

It changes no prediction (the arg max is the same for every ``T``), only the confidence. galda fits
``T`` on the SOURCE validation split — the only labelled held-out data an unsupervised adaptation
run may look at — and stores it in the checkpoint, where :func:`galda.load_model` and
``python -m galda.predict`` read it.

- :func:`fit_temperature` — the fit (L-BFGS on ``log T``);
- :func:`calibrate_checkpoint` — computes source-validation logits with a checkpoint's network,
  fits ``T`` and rewrites the checkpoint (atomically) with a ``temperature`` entry;
- :func:`expected_calibration_error`, :func:`reliability_bins`, :func:`plot_reliability` — the
  measures the report shows per domain; :func:`apply_temperature` calibrates stored P(merger).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from galda.errors import GaldaError

#: ``T`` is kept inside [1/MAX_TEMPERATURE, MAX_TEMPERATURE]: perfectly separated validation data
#: would otherwise push it towards 0 (NLL keeps falling as the logits sharpen).
MAX_TEMPERATURE = 100.0

#: checkpoint entries written by :func:`calibrate_checkpoint`
TEMPERATURE_KEY = "temperature"
CALIBRATION_KEY = "calibration"


def _as_logits(logits: Any) -> torch.Tensor:
    """(N, K) class logits as float64; a 1-D input is a binary logit z, i.e. (0, z) per row."""
    z = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
    z = z.detach().to("cpu", torch.float64)
    if z.ndim == 1:
        z = torch.stack([torch.zeros_like(z), z], dim=1)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N,) or (N, K >= 2); got shape {tuple(z.shape)}")
    return z


def _as_labels(labels: Any, n: int, k: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    y = y.detach().to("cpu").reshape(-1).long()
    if y.numel() != n:
        raise ValueError(f"logits and labels differ in length: {n} vs {y.numel()}")
    if n and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ValueError(f"labels must be class indices in [0, {k - 1}]")
    return y


def temperature_nll(logits: Any, labels: Any, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)`` for the true labels."""
    z = _as_logits(logits)
    y = _as_labels(labels, z.shape[0], z.shape[1])
    return float(F.cross_entropy(z / float(temperature), y))


def fit_temperature(logits: Any, labels: Any, max_iter: int = 100) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    ``logits``: (N, K) class logits, or (N,) binary logits; ``labels``: (N,) class indices.
    Optimised by L-BFGS (strong Wolfe line search) over ``log T``, in float64, starting at
    ``T = 1``. The NLL is convex in ``1/T``, so the minimum found is the global one; ``T`` is
    clipped to [1/MAX_TEMPERATURE, MAX_TEMPERATURE]. Returns 1.0 for empty input.
    """
    z = _as_logits(logits)
    y = _as_labels(labels, z.shape[0], z.shape[1])
    if z.shape[0] == 0:
        return 1.0
    bound = math.log(MAX_TEMPERATURE)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        t = torch.exp(log_t.clamp(-bound, bound))
        loss = F.cross_entropy(z / t, y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(torch.exp(log_t.detach().clamp(-bound, bound)))


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """Binary P(merger) → softmax(z / T)[1] = σ(logit(p) / T), e.g. for ``predictions.npz``.

    Exact for two-class softmax outputs, whose P(merger) is σ(z₁ − z₀). p = 0 and 1 stay put.
    """
    p = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        margin = np.log(p) - np.log1p(-p)
    return 1.0 / (1.0 + np.exp(-margin / float(temperature)))


# --------------------------------------------------------------------------------------------
# calibration error and reliability diagrams
# --------------------------------------------------------------------------------------------


def _confidence(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) per sample: binary P(merger) (N,) or class probabilities (N, K)."""
    p = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    y = y.reshape(-1).astype(np.int64)
    if p.ndim == 1:
        pred = (p > 0.5).astype(np.int64)  # the package's threshold convention (p > 0.5)
        conf = np.where(pred == 1, p, 1.0 - p)
    elif p.ndim == 2:
        pred = p.argmax(axis=1)
        conf = p.max(axis=1)
    else:
        raise ValueError(f"probs must be (N,) or (N, K); got shape {p.shape}")
    if len(conf) != len(y):
        raise ValueError(f"probs and labels differ in length: {len(conf)} vs {len(y)}")
    if len(conf) and not np.isfinite(conf).all():
        raise ValueError("probs contain NaN or inf")
    return conf, (pred == y).astype(np.float64)


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per confidence bin: edges, count, mean confidence and accuracy (NaN in empty bins).

    Confidence is the probability of the predicted class (``max(p, 1 - p)`` for a binary P(merger),
    predicted merger when ``p > 0.5``); bins are ``n_bins`` equal-width intervals ``(lo, hi]`` of
    [0, 1] (a confidence of exactly 0 falls in the first), as in Guo et al. 2017.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    conf, correct = _confidence(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)| over equal-width confidence bins.

    Guo et al. 2017 (Eq. 3); bins as in :func:`reliability_bins`. ``probs`` is P(merger) (N,) or
    class probabilities (N, K). NaN for no samples.
    """
    bins = reliability_bins(probs, labels, n_bins)
    n = int(bins["count"].sum())
    if n == 0:
        return float("nan")
    full = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][full] - bins["confidence"][full])
    return float(np.sum(bins["count"][full] / n * gaps))


def plot_reliability(
    curves: dict[str, tuple[Any, Any]], n_bins: int = 15, ax: Any = None, title: str | None = None
) -> Any:
    """Reliability diagram: accuracy against confidence per bin, one curve per entry.

    ``curves`` maps a label (e.g. a domain, "target (T = 1.7)") to ``(probs, labels)``. The legend
    gives each curve's ECE; the diagonal is perfect calibration. Returns the matplotlib figure (the
    caller saves it, e.g. with ``galda.results.atomic_savefig``).
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.2, 4.0))
    else:
        fig = ax.figure
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    for label, (probs, labels) in curves.items():
        bins = reliability_bins(probs, labels, n_bins)
        full = bins["count"] > 0
        ece = expected_calibration_error(probs, labels, n_bins)
        ax.plot(
            bins["confidence"][full],
            bins["accuracy"][full],
            marker="o",
            ms=3,
            label=f"{label} (ECE {ece:.3f})",
        )
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.legend(fontsize="small", loc="upper left")
    if title:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def _source_validation_loader(datamodule: Any) -> Any:
    if not getattr(datamodule, "split_sizes", None):
        datamodule.setup("validate")
    loaders = datamodule.val_dataloader()
    if isinstance(loaders, dict):
        if "source" not in loaders:
            raise GaldaError("calibration needs the source validation split; the data has none")
        return loaders["source"]
    return loaders[0] if isinstance(loaders, (list, tuple)) else loaders


@torch.no_grad()
def source_validation_logits(net: torch.nn.Module, datamodule: Any) -> tuple[Tensor, Tensor]:
    """(logits, labels) of the source validation split; the loader's images are normalised."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    logits, labels = [], []
    try:
        for batch in _source_validation_loader(datamodule):
            # evaluation batches are {"image", "label", "index"}; plain (x, y) pairs also work
            x, y = (batch["image"], batch["label"]) if isinstance(batch, dict) else batch[:2]
            out = net(x.to(device))
            logits.append((out[1] if isinstance(out, tuple) else out).float().cpu())
            labels.append(y.cpu())
    finally:
        net.train(was_training)
    if not logits:
        raise GaldaError("calibration: the source validation split is empty (split_fractions)")
    return torch.cat(logits), torch.cat(labels)


def calibrate_checkpoint(ckpt_path: str | os.PathLike, datamodule: Any) -> float:
    """Fit ``T`` on the source validation split with the checkpoint's network; store it there.

    The checkpoint gains ``temperature`` (a float) and ``calibration`` (how it was fitted: split,
    sample count, NLL and ECE before and after) and is rewritten atomically. ``datamodule`` is the
    run's data module (set up here if it is not yet); no target label is read. Returns ``T``.
    """
    from galda.inference import network_from_checkpoint, read_checkpoint
    from galda.results import atomic_write_bytes

    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path)
    net = network_from_checkpoint(checkpoint, path)
    logits, labels = source_validation_logits(net, datamodule)
    temperature = fit_temperature(logits, labels)
    probs_before = logits.double().softmax(1)[:, 1].numpy()
    probs_after = (logits.double() / temperature).softmax(1)[:, 1].numpy()
    checkpoint[TEMPERATURE_KEY] = float(temperature)
    checkpoint[CALIBRATION_KEY] = {
        "method": "temperature scaling (Guo et al. 2017)",
        "fitted_on": "source/val",
        "n_images": int(labels.numel()),
        "temperature": float(temperature),
        "nll_before": temperature_nll(logits, labels, 1.0),
        "nll_after": temperature_nll(logits, labels, temperature),
        "ece_before": expected_calibration_error(probs_before, labels.numpy()),
        "ece_after": expected_calibration_error(probs_after, labels.numpy()),
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return float(temperature)
