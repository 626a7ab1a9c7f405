"""Figure 1: per model, bars of accuracy, precision, recall, F1, Brier and AUC per method (source
hatched, target solid; error bars = sample std over seeds; values labelled), and ROC curves (mean
over seeds, vertical averaging) with the AUC in the legend."""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from galda.results import atomic_savefig

from .collect import (
    METRIC_LABELS,
    METRICS,
    Group,
    method_label,
    method_sort_key,
    model_label,
    model_sort_key,
)

# One palette, matplotlib's tab20: known methods take its strong shades, the same in every figure;
# any other method takes a light shade chosen from its name, so no colour depends on which methods
# happen to be present.
COLORS = {
    "baseline": "tab:blue",
    "mmd": "tab:purple",
    "dann": "tab:orange",
    "adabn": "tab:green",
    "bnmix": "tab:pink",
    "coral": "tab:brown",
    "cdan": "tab:red",
    "mcc": "tab:cyan",
    "selftrain": "tab:olive",
    "oracle": "tab:gray",
}
_EXTRA = [
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
]
SOURCE_HATCH = "////"
FPR_GRID = np.linspace(0.0, 1.0, 201)


def method_color(method: str, uses_target_labels: bool) -> str:
    """The method's colour, the same in every figure (a method run with target labels: grey)."""
    if method in COLORS:
        return COLORS[method]
    if uses_target_labels:
        return "dimgrey"
    return _EXTRA[zlib.crc32(method.encode()) % len(_EXTRA)]


def _load_predictions(path: Path, domain: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as z:
            if f"{domain}_probs" not in z or f"{domain}_labels" not in z:
                return None
            p = np.asarray(z[f"{domain}_probs"], dtype=float).reshape(-1)
            y = np.asarray(z[f"{domain}_labels"]).reshape(-1).astype(int)
    except (OSError, ValueError, KeyError):
        return None
    if p.size == 0 or p.size != y.size or len(np.unique(y)) < 2 or not np.isfinite(p).all():
        return None
    return p, y


def mean_roc(group: Group, domain: str) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Mean ROC over the group's seeds (tpr interpolated on a common fpr grid), and the number of
    runs whose predictions were usable."""
    from galda.metrics import binary_roc

    curves = []
    for r in group.used:
        path = r.predictions_path
        loaded = _load_predictions(path, domain) if path else None
        if loaded is None:
            continue
        fpr, tpr = binary_roc(*loaded)
        last = np.r_[np.diff(fpr) > 0, True]  # at a repeated fpr keep the upper point
        interp = np.interp(FPR_GRID, fpr[last], tpr[last], left=0.0, right=1.0)
        interp[0] = 0.0
        curves.append(interp)
    if not curves:
        return None
    mean = np.mean(curves, axis=0)
    mean[-1] = 1.0
    return FPR_GRID, mean, len(curves)


def _auc_text(group: Group, domain: str, curve: tuple | None) -> str:
    st = group.stats[(domain, "auroc")]
    if st.n and not math.isnan(st.mean):
        return f"{st.mean:.3f}" + (f" ± {st.std:.3f}" if st.n > 1 else "")
    if curve is not None:
        return f"{float(np.trapezoid(curve[1], curve[0])):.3f}"
    return "n/a"


#: above this many bars per metric the values are left to the tables (they would overlap)
MAX_LABELLED_BARS = 10


def _bar_set(
    ax: Any, g: Group, dom: str, x: np.ndarray, width: float, color: str, values: bool = True
) -> None:
    """One group's bars for one domain (source hatched, target solid), with error bars and values."""
    from matplotlib.colors import to_rgba

    means = np.array([g.stats[(dom, m)].mean for m in METRICS])
    stds = np.array([g.stats[(dom, m)].std for m in METRICS])
    errs = np.where(np.isfinite(stds), stds, 0.0)
    kw: dict[str, Any] = (
        dict(facecolor=to_rgba(color, 0.22), edgecolor=color, hatch=SOURCE_HATCH, linewidth=0.9)
        if dom == "source"
        else dict(facecolor=color, edgecolor=color, linewidth=0.9)
    )
    heights = np.nan_to_num(means, nan=0.0)
    ax.bar(
        x,
        heights,
        width,
        yerr=errs,
        capsize=1.5,
        error_kw=dict(elinewidth=0.7, ecolor="black"),
        **kw,
    )
    for xi, mval, e in zip(x, means, errs):
        if not values:
            continue
        if math.isnan(mval):
            ax.text(xi, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=6)
            continue
        ax.text(
            xi,
            mval + e + 0.012,
            f"{mval:.2f}",
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=6.5,
        )


def _metric_panel(
    ax: Any, model: str, model_rows: list, idx: dict, colors: dict[tuple[str, bool], str]
) -> None:
    """Bars of every metric for the methods run with ``model``; axes, title and legend."""

    n_bars = 2 * len(model_rows)
    width = 0.86 / max(n_bars, 1)
    x = np.arange(len(METRICS), dtype=float)
    j = 0
    for key in model_rows:
        g = idx.get((model, *key))
        for dom in ("source", "target"):
            offset = (j - (n_bars - 1) / 2) * width
            j += 1
            if g is not None:
                _bar_set(ax, g, dom, x + offset, width, colors[key], n_bars <= MAX_LABELLED_BARS)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [METRIC_LABELS[m] + ("\n(lower is better)" if m == "brier" else "") for m in METRICS],
        fontsize=10,
    )
    ax.set_ylim(0, 1.22)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    n_seeds = sorted({g.stats[("source", "acc")].n for k, g in idx.items() if k[0] == model})
    ax.set_title(
        f"{model_label(model)} (seeds per bar: {', '.join(map(str, n_seeds))})",
        loc="left",
        fontsize=11,
    )
    _metric_legend(ax, model_rows, colors, n_bars)


def _metric_legend(
    ax: Any, model_rows: list, colors: dict[tuple[str, bool], str], n_bars: int
) -> None:
    """The methods' colours and the source/target key, below the axes in rows of at most five
    (long method names never run off the figure)."""
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=colors[k], edgecolor=colors[k], label=method_label(*k)) for k in model_rows
    ]
    handles += [
        Patch(facecolor="white", edgecolor="black", hatch=SOURCE_HATCH, label="source"),
        Patch(facecolor="black", edgecolor="black", label="target"),
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        ncol=min(len(handles), 5),
        fontsize=8.5,
        frameon=False,
        bbox_to_anchor=(0.5, -0.1),
        handlelength=1.6,
        columnspacing=1.2,
    )
    if n_bars > MAX_LABELLED_BARS:
        ax.text(
            1.0,
            1.01,
            "values: metrics.md",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="grey",
        )


def _roc_panel(
    rax: Any, model: str, model_rows: list, idx: dict, colors: dict[tuple[str, bool], str]
) -> None:
    """Mean ROC curves (dashed source, solid target) of the methods run with ``model``."""
    rax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    for key in model_rows:
        g = idx[(model, *key)]
        for dom, ls in (("source", "--"), ("target", "-")):
            curve = mean_roc(g, dom)
            if curve is None:
                continue
            fpr, tpr, n = curve
            partial = f" [ROC: {n} of {len(g.used)} runs]" if n < len(g.used) else ""
            rax.plot(
                fpr,
                tpr,
                ls=ls,
                color=colors[key],
                lw=1.5,
                label=f"{g.method_label}, {dom}: AUC {_auc_text(g, dom, curve)}{partial}",
            )
    rax.set_xlim(0, 1)
    rax.set_ylim(0, 1.01)
    rax.set_aspect("equal")
    rax.set_xlabel("false positive rate")
    rax.set_ylabel("true positive rate")
    rax.set_title(f"ROC, {model_label(model)} (dashed = source)", fontsize=11)
    if rax.get_legend_handles_labels()[0]:
        rax.legend(loc="lower right", fontsize=6.5, frameon=True, framealpha=0.85)
    else:
        rax.text(
            0.5,
            0.5,
            "no predictions.npz\nbeside results.json",
            ha="center",
            va="center",
            transform=rax.transAxes,
            color="grey",
        )


def draw_figure1(groups: list[Group], data: str):
    """Build the matplotlib Figure for one data set (groups of that data set only)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    gs = [g for g in groups if g.data == data]
    models = sorted({g.model for g in gs}, key=model_sort_key)
    rows = sorted({(g.method, g.uses_target_labels) for g in gs}, key=lambda k: method_sort_key(*k))
    colors = {k: method_color(*k) for k in rows}
    idx = {(g.model, g.method, g.uses_target_labels): g for g in gs}

    n_legend_rows = -(-(len(rows) + 2) // 5)  # methods + source/target keys, five per row
    fig = plt.figure(
        figsize=(16, (5.0 + 0.3 * n_legend_rows) * len(models)), constrained_layout=True
    )
    grid = fig.add_gridspec(len(models), 2, width_ratios=[3.3, 1.15])
    fig.suptitle(
        f"Figure 1 — test metrics and ROC curves, data: {data} (mean ± sample std over seeds)",
        fontsize=13,
    )
    for i, model in enumerate(models):
        model_rows = [k for k in rows if (model, *k) in idx]  # only methods run for this model
        _metric_panel(fig.add_subplot(grid[i, 0]), model, model_rows, idx, colors)
        _roc_panel(fig.add_subplot(grid[i, 1]), model, model_rows, idx, colors)
    return fig


def write_figure1(groups: list[Group], out: Path, data: str, stem: str = "figure1") -> list[Path]:
    """Draw Figure 1 for one data set and write ``{stem}.png`` and ``{stem}.pdf`` atomically."""
    import matplotlib.pyplot as plt

    fig = draw_figure1(groups, data)
    try:
        paths = [
            atomic_savefig(fig, Path(out) / f"{stem}.png", dpi=150),
            atomic_savefig(fig, Path(out) / f"{stem}.pdf"),
        ]
    finally:
        plt.close(fig)
    return paths


__all__ = ["COLORS", "draw_figure1", "mean_roc", "write_figure1", "method_color"]
