"""Numerical pieces of the domain-shift diagnostics (plain NumPy; no plotting, no files).

- :func:`pixel_embedding`: a fixed (not learned) pixel-space embedding of stamps.
- :func:`mmd_permutation_test`: kernel two-sample test (Gretton et al. 2012, JMLR 13, 723).
- :func:`proxy_a_distance`: the proxy A-distance of a domain classifier (Ben-David et al. 2007,
  NeurIPS; 2010, Mach. Learn. 79, 151).
- :func:`border_noise`, :func:`radial_power_spectrum`: per-band noise and power spectra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MMDTest",
    "asinh_scales",
    "border_noise",
    "galaxy_halves",
    "median_bandwidth",
    "mmd_permutation_test",
    "pixel_embedding",
    "proxy_a_distance",
    "radial_power_spectrum",
]


def border_pixels(images: np.ndarray, width: int = 4) -> np.ndarray:
    """The pixels of a ``width``-pixel frame around each stamp: (N, C, n_border)."""
    h, w = images.shape[-2:]
    mask = np.zeros((h, w), bool)
    mask[:width] = mask[-width:] = True
    mask[:, :width] = mask[:, -width:] = True
    return images[:, :, mask]


def border_noise(images: np.ndarray, width: int = 4) -> dict[str, np.ndarray]:
    """Per-image, per-band noise from the stamp border: (N, C) arrays.

    ``mad_std`` = 1.4826 · median(|x − median(x)|) and ``clipped_std`` = the 3σ-clipped standard
    deviation (astropy.stats), both over the border frame, where galaxies rarely reach.
    """
    from astropy.stats import mad_std, sigma_clipped_stats

    border = border_pixels(images, width).astype(np.float64)
    mad = mad_std(border, axis=2)
    _, _, clipped = sigma_clipped_stats(border, sigma=3.0, axis=2)
    return {"mad_std": np.asarray(mad), "clipped_std": np.asarray(clipped)}


def radial_power_spectrum(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthally averaged power spectrum per band, averaged over images.

    P(k) = mean over images and over |k'| in [k, k + 1/L) of |FFT2(x − mean x)|² / (H·W), for
    integer radial bins up to the Nyquist frequency. Returns ``(k, power)`` with ``k`` in cycles per
    pixel, shape (K,), and ``power`` of shape (C, K).
    """
    n, c, h, w = images.shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    radius = np.sqrt(ky**2 + kx**2) * min(h, w)
    bins = np.floor(radius + 0.5).astype(int)
    n_bins = min(h, w) // 2 + 1
    keep = bins < n_bins
    counts = np.bincount(bins[keep], minlength=n_bins).astype(np.float64)
    power = np.zeros((c, n_bins))
    for start in range(0, n, 256):
        block = images[start : start + 256].astype(np.float64)
        block = block - block.mean(axis=(2, 3), keepdims=True)
        p2 = np.abs(np.fft.fft2(block)) ** 2 / (h * w)
        summed = p2.sum(axis=0)  # (C, H, W)
        for b in range(c):
            power[b] += np.bincount(bins[keep], weights=summed[b][keep], minlength=n_bins)
    power /= np.maximum(counts, 1)[None, :] * max(n, 1)
    k = np.arange(n_bins) / min(h, w)
    return k[1:], power[:, 1:]  # drop k = 0 (the mean was removed)


def asinh_scales(images: np.ndarray, width: int = 4) -> np.ndarray:
    """Per-band softening scale s_b of the asinh stretch: the median border MAD over all stamps.

    Where that is ~0 (noiseless images) it falls back to 1 % of the band's 99th percentile of |x|,
    so the stretch is defined for pristine stamps too.
    """
    noise = np.median(border_noise(images, width)["mad_std"], axis=0)
    bright = np.percentile(np.abs(images), 99, axis=(0, 2, 3))
    floor = np.maximum(1e-2 * bright, 1e-12)
    return np.where(noise > floor, noise, floor)


def pixel_embedding(images: np.ndarray, scales: np.ndarray, factor: int = 5) -> np.ndarray:
    """A fixed pixel-space embedding: asinh(x / s_b) per band, then ``factor``² block means.

    The stamp is centre-cropped to a multiple of ``factor``. ``scales`` must be the same for every
    sample compared (see :func:`asinh_scales`), so the embedding is one fixed function of a stamp.
    Returns (N, C · (H // factor) · (W // factor)) float64.
    """
    n, c, h, w = images.shape
    hh, ww = (h // factor) * factor, (w // factor) * factor
    y0, x0 = (h - hh) // 2, (w - ww) // 2
    x = images[:, :, y0 : y0 + hh, x0 : x0 + ww].astype(np.float64)
    x = np.arcsinh(x / np.asarray(scales, np.float64)[None, :, None, None])
    x = x.reshape(n, c, hh // factor, factor, ww // factor, factor).mean(axis=(3, 5))
    return x.reshape(n, -1)


def _sq_distances(z: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", z, z)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return d2


def median_bandwidth(d2: np.ndarray) -> float:
    """Median heuristic: σ = median pairwise distance ‖z_i − z_j‖ (i < j) of the pooled sample."""
    iu = np.triu_indices(d2.shape[0], k=1)
    med = float(np.median(np.sqrt(d2[iu])))
    return med if med > 0 else 1.0


@dataclass
class MMDTest:
    """Result of :func:`mmd_permutation_test`."""

    mmd2: float
    p_value: float
    bandwidth: float
    n_x: int
    n_y: int
    n_permutations: int
    null: np.ndarray

    def as_dict(self) -> dict[str, float | int]:
        return {
            "mmd2_unbiased": self.mmd2,
            "p_value": self.p_value,
            "bandwidth": self.bandwidth,
            "n_x": self.n_x,
            "n_y": self.n_y,
            "n_permutations": self.n_permutations,
            "null_mean": float(np.mean(self.null)),
            "null_std": float(np.std(self.null)),
        }


def _unbiased_mmd2(
    kernel: np.ndarray, members: np.ndarray, n: int, m: int, total: float
) -> np.ndarray:
    """MMD²_u (Gretton et al. 2012, Eq. 3) for each 0/1 membership row of ``members`` (P, N).

    With a ∈ {0,1}ᴺ marking X and b = 1 − a: Σ_{i≠j∈X} k = aᵀKa − n (k(x, x) = 1 for a Gaussian),
    Σ_{X,Y} k = aᵀK1 − aᵀKa and Σ_{i≠j∈Y} k = 1ᵀK1 − aᵀKa − 2 aᵀKb − m.
    """
    ka = members @ kernel
    aka = np.einsum("pn,pn->p", ka, members)
    akb = ka.sum(axis=1) - aka
    bkb = total - aka - 2.0 * akb
    return (aka - n) / (n * (n - 1)) + (bkb - m) / (m * (m - 1)) - 2.0 * akb / (n * m)


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, n_permutations: int = 1000, seed: int = 0, batch: int = 100
) -> MMDTest:
    """Kernel two-sample test of H0: P_x = P_y (Gretton et al. 2012).

    Statistic: the unbiased MMD² with a Gaussian kernel k(a, b) = exp(−‖a − b‖² / (2σ²)), σ from the
    median heuristic on the pooled sample. Null distribution: the statistic recomputed after
    ``n_permutations`` random reassignments of the pooled sample to the two groups (seeded).
    p = (1 + #{MMD²_perm ≥ MMD²_obs}) / (1 + n_permutations).
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"the MMD test needs at least 2 samples per group, got {n} and {m}")
    z = np.concatenate([x, y])
    d2 = _sq_distances(z)
    sigma = median_bandwidth(d2)
    kernel = np.exp(-d2 / (2.0 * sigma**2))
    del d2
    total = float(kernel.sum())
    observed_members = np.zeros((1, n + m))
    observed_members[0, :n] = 1.0
    observed = float(_unbiased_mmd2(kernel, observed_members, n, m, total)[0])
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    for start in range(0, n_permutations, batch):
        p = min(batch, n_permutations - start)
        members = np.zeros((p, n + m))
        for i in range(p):
            members[i, rng.permutation(n + m)[:n]] = 1.0
        null[start : start + p] = _unbiased_mmd2(kernel, members, n, m, total)
    p_value = (1.0 + float(np.sum(null >= observed))) / (1.0 + n_permutations)
    return MMDTest(observed, p_value, sigma, n, m, n_permutations, null)


def galaxy_halves(galaxy_id: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of two halves of the galaxies (all views of a galaxy on one side)."""
    unique = np.unique(galaxy_id)
    order = np.random.default_rng(seed).permutation(len(unique))
    first = np.isin(galaxy_id, unique[order[: len(unique) // 2]])
    return np.flatnonzero(first), np.flatnonzero(~first)


def proxy_a_distance(
    x: np.ndarray,
    y: np.ndarray,
    groups_x: np.ndarray | None = None,
    groups_y: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Proxy A-distance d_A = 2 (1 − 2ε) of a logistic-regression domain classifier.

    ε is the classifier's error on a held-out half (split by ``groups`` — galaxy ids — when given,
    so no galaxy is on both sides). d_A ≈ 0: the domains are indistinguishable to a linear probe;
    d_A = 2: perfectly separable. Reported raw (it can dip below 0 by chance) and clipped to [0, 2].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def halves(n: int, groups: np.ndarray | None, s: int) -> tuple[np.ndarray, np.ndarray]:
        if groups is None:
            order = np.random.default_rng(s).permutation(n)
            return np.sort(order[: n // 2]), np.sort(order[n // 2 :])
        return galaxy_halves(np.asarray(groups), s)

    xa, xb = halves(len(x), groups_x, seed)
    ya, yb = halves(len(y), groups_y, seed + 1)
    features_train = np.concatenate([x[xa], y[ya]])
    labels_train = np.r_[np.zeros(len(xa)), np.ones(len(ya))]
    features_test = np.concatenate([x[xb], y[yb]])
    labels_test = np.r_[np.zeros(len(xb)), np.ones(len(yb))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    clf.fit(features_train, labels_train)
    accuracy = float(np.mean(clf.predict(features_test) == labels_test))
    error = 1.0 - accuracy
    raw = 2.0 * (1.0 - 2.0 * error)
    return {
        "classifier": "logistic regression (standardised inputs, C=1)",
        "heldout_accuracy": accuracy,
        "heldout_error": error,
        "a_distance": float(np.clip(raw, 0.0, 2.0)),
        "a_distance_raw": raw,
        "n_train": len(labels_train),
        "n_test": len(labels_test),
    }
