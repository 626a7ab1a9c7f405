"""``python -m galda.simulate.gallery DIR --out docs/img/gallery.png``: source vs target, mergers vs not.

Colour composites with astropy's Lupton et al. (2004) asinh stretch: red = F356W, green = F160W,
blue = F814W (longest to shortest wavelength), the same stretch for both domains so the noise is
seen at its true level.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from galda.data.h5format import DomainData

STAGES = ("wide pair", "close pair", "double nucleus", "post-merger")


def _rgb(img: np.ndarray, bands: list[str], stretch: float, q: float) -> np.ndarray:
    from astropy.visualization import make_lupton_rgb

    order = [bands.index(b) for b in ("F356W", "F160W", "F814W")]
    r, g, b = (img[i] for i in order)
    return make_lupton_rgb(r, g, b, minimum=0.0, stretch=stretch, Q=q)


def _pick_examples(src: DomainData, n: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices (first views only) of ``n`` mergers and ``n`` non-mergers to show.

    Mergers: one per stage first, then random ones; non-mergers: up to half with a neighbour, the
    rest isolated.
    """
    rng = np.random.default_rng(seed)
    p = src.params
    first_view = p["view"] == 0
    m_idx = []
    for st in range(4):
        cand = np.flatnonzero((src.labels == 1) & (p["merger_stage"] == st) & first_view)
        if len(cand):
            m_idx.append(int(rng.choice(cand)))
    rest = np.setdiff1d(np.flatnonzero((src.labels == 1) & first_view), m_idx)
    m_idx += [int(i) for i in rng.choice(rest, size=max(0, n - len(m_idx)), replace=False)]
    nb = np.flatnonzero((src.labels == 0) & (p["has_neighbour"] == 1) & first_view)
    solo = np.flatnonzero((src.labels == 0) & (p["has_neighbour"] == 0) & first_view)
    k = min(len(nb), n // 2)
    nm_idx = [int(i) for i in rng.choice(nb, size=k, replace=False)]
    nm_idx += [int(i) for i in rng.choice(solo, size=min(len(solo), n - k), replace=False)]
    return m_idx[:n], nm_idx[:n]


def _caption(src: DomainData, i: int) -> str:
    """Panel title: merger stage, flux ratio and separation, or neighbour and magnitude."""
    p = src.params
    assert src.labels is not None  # rows hold indices only for a labelled source
    if src.labels[i] == 1:
        return (
            f"{STAGES[int(p['merger_stage'][i])]}\n"
            f'μ={p["flux_ratio"][i]:.2f} d={p["separation_arcsec"][i]:.2f}"'
        )
    t = "neighbour" if p["has_neighbour"][i] == 1 else "isolated"
    return t + f"\nH={p['mag_F160W'][i]:.1f}"


def _draw_panels(
    axes: np.ndarray, rows: list, src: DomainData, bands: list[str], stretch: float, q: float
) -> None:
    """One row per (class, domain); captions on the source rows, row labels on the left."""
    ncol = axes.shape[1]
    for r, (label, dom, idx) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(idx):
                ax.axis("off")
                continue
            i = idx[c]
            ax.imshow(_rgb(dom.images[i], bands, stretch, q), origin="lower")
            if r % 2 == 0:
                ax.set_title(_caption(src, i), fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)


def make_gallery(
    folder: str | Path,
    out: str | Path,
    n: int = 6,
    seed: int = 0,
    stretch: float = 15.0,
    q: float = 8.0,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from galda.data.h5format import read_domain

    folder = Path(folder)
    src = read_domain(folder / "source.h5")
    tgt = read_domain(folder / "target.h5")
    bands = list(src.attrs["band_names"])
    if not np.array_equal(src.galaxy_id, tgt.galaxy_id):
        raise SystemExit("gallery needs paired domains (same galaxy_ids in source and target)")
    m_idx, nm_idx = _pick_examples(src, n, seed)
    rows = []
    for name, idx in (("merger", m_idx), ("non-merger", nm_idx)):
        rows.append((f"{name}\nsource", src, idx))
        rows.append((f"{name}\ntarget", tgt, idx))
    ncol = max(len(r[2]) for r in rows)
    fig, axes = plt.subplots(
        len(rows), ncol, figsize=(1.9 * ncol + 0.6, 2.0 * len(rows)), squeeze=False
    )
    _draw_panels(axes, rows, src, bands, stretch, q)
    att = src.attrs
    fig.suptitle(
        f"galda.simulate preset={att.get('preset')} seed={att.get('seed')}: RGB = F356W/F160W/F814W, "
        f'{75 * float(att["pixel_scale_arcsec"]):.1f}" stamps; target noise '
        f"{att.get('sb_limit_mag_arcsec2')} mag/arcsec²",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m galda.simulate.gallery", description=__doc__.split("\n")[0]
    )
    ap.add_argument("folder", help="folder holding source.h5 and target.h5 (paired)")
    ap.add_argument("--out", default="docs/img/gallery.png")
    ap.add_argument("--n", type=int, default=6, help="examples per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stretch", type=float, default=15.0, help="asinh linear stretch (nJy/pixel)")
    ap.add_argument("--Q", type=float, default=8.0, help="asinh softening")
    a = ap.parse_args(argv)
    path = make_gallery(a.folder, a.out, a.n, a.seed, a.stretch, a.Q)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
