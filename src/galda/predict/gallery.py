"""``--gallery``: the most confident mergers, the most confident non-mergers and the least confident
images of a catalogue, side by side (a quick look that the classifier does something sensible)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from galda.predict.inputs import PredictInput
from galda.results import atomic_savefig


def gallery_rows(p: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Row indices: top-``k`` P(merger), bottom-``k``, and the ``k`` nearest 0.5."""
    k = max(1, min(k, len(p)))
    order = np.argsort(p, kind="stable")
    return {
        "most confident mergers": order[::-1][:k],
        "most confident non-mergers": order[:k],
        "least confident": np.argsort(np.abs(p - 0.5), kind="stable")[:k],
    }


def display_image(img: np.ndarray) -> np.ndarray:
    """An asinh-stretched view: RGB from the first three bands (reddest first), else grey.

    Each band is scaled between its own 1st and 99.5th percentiles (bands differ in units)."""
    img = np.nan_to_num(np.asarray(img, np.float64))
    planes = img[:3][::-1] if img.shape[0] >= 3 else img[:1]
    lo = np.percentile(planes, 1, axis=(1, 2), keepdims=True)
    hi = np.percentile(planes, 99.5, axis=(1, 2), keepdims=True)
    unit = np.clip((planes - lo) / np.maximum(hi - lo, 1e-12), 0, None)
    scaled = np.arcsinh(unit * 10) / np.arcsinh(10)
    scaled = np.clip(scaled, 0, 1)
    return np.moveaxis(scaled, 0, -1) if scaled.shape[0] == 3 else scaled[0]


def write_gallery(
    path: str | os.PathLike,
    inp: PredictInput,
    p: np.ndarray,
    ids: Any = None,
    k: int = 6,
) -> None:
    """Draw the gallery (3 rows of ``k`` stamps titled with P(merger) and the id) atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = gallery_rows(p, k)
    ncol = len(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.6 * ncol, 2.1 * len(rows)), squeeze=False)
    for r, (title, idx) in enumerate(rows.items()):
        for c in range(ncol):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(idx):
                ax.axis("off")
                continue
            i = int(idx[c])
            img = inp.source.read(i, i + 1)[0]
            ax.imshow(display_image(img), cmap="gray", origin="lower", interpolation="nearest")
            label = f"p={p[i]:.3f}"
            label += f"\n{ids[i]}" if ids is not None else f"\nrow {i}"
            ax.set_title(label, fontsize=7)
        axes[r, 0].set_ylabel(title, fontsize=7)
    fig.suptitle(f"{inp.path.name}: {len(p)} images", fontsize=9)
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=110)
    finally:
        plt.close(fig)
