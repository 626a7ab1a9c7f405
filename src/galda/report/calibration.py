"""Calibration section of the report: expected calibration error per domain, before and after the
temperature fitted on source validation, and a reliability diagram per method.

Reads each complete run's ``predictions.npz`` (uncalibrated P(merger)) and ``temperature`` from its
``results.json``; runs without predictions are skipped and counted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from galda.calibration import apply_temperature, expected_calibration_error, plot_reliability
from galda.report.collect import Run, method_label, model_label
from galda.results import atomic_savefig, atomic_write_text

DOMAINS = ("source", "target")


def _load(run: Run) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    path = run.predictions_path
    if path is None:
        return None
    with np.load(path) as arrays:
        return {
            d: (arrays[f"{d}_probs"], arrays[f"{d}_labels"])
            for d in DOMAINS
            if f"{d}_labels" in arrays
        }


def _mean_std(values: list[float]) -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return "—"
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return f"{np.mean(vals):.3f} ± {std:.3f} (n={len(vals)})"


def write_calibration(runs: list[Run], out: Path) -> dict[str, Path]:
    """Write ``calibration.md`` and ``reliability.png`` into ``out``; return the files written."""
    groups: dict[tuple, list[tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]]]] = defaultdict(
        list
    )
    skipped = 0
    for run in runs:
        if not run.complete:
            continue
        preds = _load(run)
        if not preds:
            skipped += 1
            continue
        temperature = float(run.raw.get("temperature") or 1.0)
        groups[(run.data, run.model, run.method, run.uses_target_labels)].append(
            (temperature, preds)
        )
    if not groups:
        return {}
    lines = [
        "## Calibration — expected calibration error (15 bins), test sets",
        "",
        "Raw: softmax of the network. Calibrated: divided by the temperature T fitted on *source*",
        "validation (no target label), as `galda.predict` applies it. Mean ± std over seeds.",
        "",
        "| Data | Model | Method | T | Source raw | Source calibrated | Target raw | Target calibrated |",
        "|:---|:---|:---|:---:|:---:|:---:|:---:|:---:|",
    ]
    for (data, model, method, labels_used), members in sorted(groups.items()):
        cells = []
        for domain in DOMAINS:
            for calibrated in (False, True):
                cells.append(
                    _mean_std(
                        [
                            expected_calibration_error(
                                apply_temperature(p[domain][0], t) if calibrated else p[domain][0],
                                p[domain][1],
                            )
                            for t, p in members
                            if domain in p
                        ]
                    )
                )
        temps = _mean_std([t for t, _ in members])
        lines.append(
            f"| {data} | {model_label(model)} | {method_label(method, labels_used)} | "
            f"{temps} | " + " | ".join(cells) + " |"
        )
    if skipped:
        lines += ["", f"{skipped} complete run(s) without predictions.npz were left out."]
    files = {"calibration.md": atomic_write_text(out / "calibration.md", "\n".join(lines) + "\n")}
    files["reliability.png"] = _reliability_figure(groups, out / "reliability.png")
    return files


def _reliability_figure(groups: dict[tuple, list], path: Path) -> Path:
    """One panel per (data, model, method): calibrated test predictions pooled over seeds."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = sorted(groups)
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        curves: dict[str, Any] = {}
        for domain in DOMAINS:
            pairs = [
                (apply_temperature(p[domain][0], t), p[domain][1])
                for t, p in groups[key]
                if domain in p
            ]
            if pairs:
                curves[domain] = (
                    np.concatenate([a for a, _ in pairs]),
                    np.concatenate([b for _, b in pairs]),
                )
        plot_reliability(
            curves, ax=ax, title=f"{model_label(key[1])} · {method_label(key[2], key[3])}"
        )
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path
