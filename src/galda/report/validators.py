"""The validator study: ``python -m galda.report --validators DIR [DIR ...] --out OUT``.

Reads every epoch of every run under the folders (each run's Lightning ``csv/metrics.csv``:
``epoch``, ``val/target/acc``, ``val/source/acc``, ``val/validator/<name>``) and scores each
label-free validator against the target-validation accuracy ‡:

- Spearman rank correlation ρ between the validator, oriented so that larger = better by its
  registry direction, and the target accuracy, across the epochs of each run (mean over runs) and
  pooled over all epochs of all runs;
- checkpoint selection: in each run, the target accuracy at the epoch the validator selects (first
  best epoch, as ModelCheckpoint keeps it), beside the best epoch (oracle ‡) and the epoch that
  source-validation accuracy selects (means over the same runs);
- run + checkpoint selection: in each folder given on the command line (a sweep, e.g. an Optuna
  study), the best (run, epoch) by the validator against the oracle and source-accuracy choices;
- for runs whose own ``selection.monitor`` was the validator, their mean ``test/target/acc`` ‡.

‡ target labels are used here only to score the validators, never to select; every output says so.
Writes ``validators.md``, ``validators.csv`` and ``validators_scatter.png`` (+ ``.pdf``).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from galda.results import RESULTS_FILE, atomic_savefig, atomic_write_text, read_results
from galda.validators import PREFIX, VALIDATORS, direction

TARGET = "val/target/acc"
SOURCE = "val/source/acc"
MARK = "‡"
NOTE = (
    f"{MARK} Target labels (val/target/acc, test/target/acc) are used here only to score the "
    "validators; no validator reads them and nothing here selects with them."
)

CSV_FIELDS = (
    "group",
    "validator",
    "direction",
    "runs",
    "rho_run_mean",
    "rho_run_sd",
    "rho_pooled",
    "points",
    "acc_selected",
    "acc_oracle",
    "acc_source_selection",
    "gap_to_oracle",
    "gain_over_source",
    "sweeps",
    "sweep_acc_selected",
    "sweep_acc_oracle",
    "sweep_acc_source_selection",
    "test_runs",
    "test_acc_selected",
)


@dataclass
class RunCurve:
    """The per-epoch validation values of one run."""

    run_dir: Path
    sweep: Path
    group: str
    epochs: np.ndarray
    values: dict[str, np.ndarray]
    results: dict[str, Any] = field(default_factory=dict)

    def column(self, key: str) -> np.ndarray:
        return self.values.get(key, np.full(len(self.epochs), np.nan))


# --------------------------------------------------------------------------- statistics


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n−1, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ: the Pearson correlation of the (tie-averaged) ranks; NaN pairs are dropped,
    NaN when fewer than 3 pairs remain or either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else math.nan


def _select(score: np.ndarray, target: np.ndarray) -> float:
    """Target value at the first maximum of ``score`` (NaN scores never selected)."""
    ok = np.isfinite(score)
    if not ok.any():
        return math.nan
    masked = np.where(ok, score, -np.inf)
    return float(target[int(np.argmax(masked))])


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if np.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


# --------------------------------------------------------------------------- reading


def read_metrics_csv(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-epoch ``val/*`` values from a Lightning CSVLogger file (the last value logged in each
    epoch wins, so a resumed run's repeated epochs take their newest value).

    Only training epochs count (epochs with ``train/*`` values, when the file has any): the
    re-validation of the selected checkpoint after training, which ``galda.train`` logs under the
    next epoch number, repeats an epoch already read.
    """
    per_epoch: dict[int, dict[str, float]] = {}
    trained: set[int] = set()
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            epoch = row.get("epoch")
            if epoch in (None, ""):
                continue
            e = int(float(epoch))
            if any(k and k.startswith("train/") and v not in (None, "") for k, v in row.items()):
                trained.add(e)
            vals = {
                k: float(v)
                for k, v in row.items()
                if k and k.startswith("val/") and v not in (None, "")
            }
            if vals:
                per_epoch.setdefault(e, {}).update(vals)
    if trained:
        per_epoch = {e: v for e, v in per_epoch.items() if e in trained}
    epochs = np.array(sorted(per_epoch), dtype=int)
    keys = sorted({k for vals in per_epoch.values() for k in vals})
    values = {k: np.array([per_epoch[e].get(k, np.nan) for e in epochs], float) for k in keys}
    return epochs, values


def _is_lightning_metrics(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return False
    return "epoch" in header and any(h.startswith("val/") for h in header)


def _identity(run_dir: Path) -> tuple[str, dict[str, Any]]:
    """``data/model/method`` from results.json (or the logged hyper-parameters), and the results."""
    results: dict[str, Any] = {}
    for candidate in (run_dir / RESULTS_FILE, run_dir.parent / RESULTS_FILE):
        if candidate.is_file():
            try:
                results = read_results(candidate)
                break
            except (OSError, ValueError):
                pass
    names = [results.get(k) for k in ("data", "model", "method")]
    if not all(names):
        hparams = run_dir / "hparams.yaml"
        if hparams.is_file():
            from omegaconf import OmegaConf

            cfg = OmegaConf.load(hparams)
            names = [OmegaConf.select(cfg, f"{k}.name") for k in ("data", "model", "method")]
    if not all(names):
        return "?", results
    return "/".join(str(n) for n in names), results


def load_curves(dirs: Iterable[str | os.PathLike]) -> list[RunCurve]:
    """Every run (a Lightning ``metrics.csv`` with ``val/`` columns) under each folder."""
    curves = []
    for sweep in (Path(d) for d in dirs):
        paths = [sweep] if sweep.is_file() else sorted(sweep.rglob("metrics.csv"))
        for path in paths:
            if not _is_lightning_metrics(path):
                continue
            epochs, values = read_metrics_csv(path)
            if not len(epochs) or TARGET not in values:
                continue
            group, results = _identity(path.parent)
            sweep_dir = sweep.parent if sweep.is_file() else sweep
            run_dir = path.parent.parent if path.parent.name == "csv" else path.parent
            curves.append(RunCurve(run_dir, sweep_dir, group, epochs, values, results))
    return curves


# --------------------------------------------------------------------------- the study


def validator_names(curves: list[RunCurve]) -> list[str]:
    """Validators logged by any run, in registry order (unknown names last, alphabetically)."""
    found = {k[len(PREFIX) :] for c in curves for k in c.values if k.startswith(PREFIX)}
    return [n for n in VALIDATORS if n in found] + sorted(found - set(VALIDATORS))


def study_rows(curves: list[RunCurve]) -> list[dict[str, Any]]:
    """One row per (group, validator), plus the group ``all``."""
    rows = []
    groups = sorted({c.group for c in curves})
    for group in groups + (["all"] if len(groups) > 1 else []):
        members = [c for c in curves if group in ("all", c.group)]
        for name in validator_names(members):
            row = _study_row(members, name)
            if row:
                rows.append({"group": group, **row})
    return rows


def _oriented(curve: RunCurve, key: str, sign: float) -> np.ndarray:
    return sign * curve.column(key)


def _study_row(curves: list[RunCurve], name: str) -> dict[str, Any] | None:
    key = PREFIX + name
    try:
        sense = direction(key)
    except Exception:  # noqa: BLE001 - a validator this version does not know: skip it
        return None
    sign = 1.0 if sense == "max" else -1.0
    runs = [c for c in curves if np.isfinite(c.column(key)).any()]
    if not runs:
        return None
    rhos = [spearman(_oriented(c, key, sign), c.column(TARGET)) for c in runs]
    rhos = [r for r in rhos if np.isfinite(r)]
    xs = np.concatenate([_oriented(c, key, sign) for c in runs])
    ys = np.concatenate([c.column(TARGET) for c in runs])
    selected = [_select(_oriented(c, key, sign), c.column(TARGET)) for c in runs]
    oracle = [_select(c.column(TARGET), c.column(TARGET)) for c in runs]
    by_source = [_select(c.column(SOURCE), c.column(TARGET)) for c in runs]
    sweeps: dict[Path, list[RunCurve]] = {}
    for c in runs:
        sweeps.setdefault(c.sweep, []).append(c)
    sweep_sel, sweep_oracle, sweep_source = [], [], []
    for members in sweeps.values():
        target = np.concatenate([c.column(TARGET) for c in members])
        scores = np.concatenate([_oriented(c, key, sign) for c in members])
        sweep_sel.append(_select(scores, target))
        sweep_oracle.append(_select(target, target))
        sweep_source.append(_select(np.concatenate([c.column(SOURCE) for c in members]), target))
    tested = [
        float(c.results["test/target/acc"])
        for c in runs
        if (c.results.get("selection") or {}).get("monitor") == key
        and c.results.get("test/target/acc") is not None
    ]
    acc_sel, acc_oracle, acc_source = _mean(selected), _mean(oracle), _mean(by_source)
    return {
        "validator": name,
        "direction": sense,
        "runs": len(runs),
        "rho_run_mean": _mean(rhos),
        "rho_run_sd": float(np.std(rhos, ddof=1)) if len(rhos) > 1 else math.nan,
        "rho_pooled": spearman(xs, ys),
        "points": int((np.isfinite(xs) & np.isfinite(ys)).sum()),
        "acc_selected": acc_sel,
        "acc_oracle": acc_oracle,
        "acc_source_selection": acc_source,
        "gap_to_oracle": acc_oracle - acc_sel,
        "gain_over_source": acc_sel - acc_source,
        "sweeps": len(sweeps),
        "sweep_acc_selected": _mean(sweep_sel),
        "sweep_acc_oracle": _mean(sweep_oracle),
        "sweep_acc_source_selection": _mean(sweep_source),
        "test_runs": len(tested),
        "test_acc_selected": _mean(tested),
    }


# --------------------------------------------------------------------------- outputs


def _pct(v: float) -> str:
    return "—" if not np.isfinite(v) else f"{100 * v:.1f}"


def _pts(v: float) -> str:
    if not np.isfinite(v):
        return "—"
    return f"{100 * v:+.1f}" if abs(100 * v) >= 0.05 else "0.0"


def _rho(mean: float, sd: float = math.nan) -> str:
    if not np.isfinite(mean):
        return "—"
    return f"{mean:+.2f}" + (f" ± {sd:.2f}" if np.isfinite(sd) else "")


def study_markdown(rows: list[dict[str, Any]], n_runs: int) -> str:
    lines = [
        f"# Validator study {MARK}",
        "",
        NOTE,
        "",
        (
            f"{n_runs} runs. ρ: Spearman rank correlation of the validator (oriented: larger = "
            "better by its direction) with the target-validation accuracy, across epochs (mean ± "
            "sd over runs) and pooled over all epochs of all runs. Accuracies in %: the target "
            "accuracy at the epoch each rule selects, mean over runs; Δ in points. Sweep columns: "
            "the best (run, epoch) of each folder given on the command line."
        ),
        "",
    ]
    header = [
        "validator",
        "dir",
        "runs",
        "ρ per run",
        "ρ pooled",
        f"selected {MARK}",
        f"oracle {MARK}",
        f"by source acc {MARK}",
        f"Δ oracle {MARK}",
        f"Δ source acc {MARK}",
        f"sweep: selected / oracle / source acc {MARK}",
        f"test acc, runs selected by it {MARK}",
    ]
    for group in dict.fromkeys(r["group"] for r in rows):
        lines += [
            f"## {group}",
            "",
            "| " + " | ".join(header) + " |",
            "|:---|:---:|" + "---:|" * (len(header) - 2),
        ]
        for r in (r for r in rows if r["group"] == group):
            sweep = (
                f"{_pct(r['sweep_acc_selected'])} / {_pct(r['sweep_acc_oracle'])} / "
                f"{_pct(r['sweep_acc_source_selection'])} (n={r['sweeps']})"
            )
            test = f"{_pct(r['test_acc_selected'])} (n={r['test_runs']})" if r["test_runs"] else "—"
            cells = [
                r["validator"],
                r["direction"],
                str(r["runs"]),
                _rho(r["rho_run_mean"], r["rho_run_sd"]),
                _rho(r["rho_pooled"]),
                _pct(r["acc_selected"]),
                _pct(r["acc_oracle"]),
                _pct(r["acc_source_selection"]),
                _pts(-r["gap_to_oracle"]),
                _pts(r["gain_over_source"]),
                sweep,
                test,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def study_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    buf.write(f"# {NOTE}\n")
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def draw_scatter(curves: list[RunCurve], rows: list[dict[str, Any]]):
    """One panel per validator: validator value against target-validation accuracy ‡, every
    epoch of every run, coloured by group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = validator_names(curves)
    pooled = {r["validator"]: r["rho_pooled"] for r in rows if r["group"] in ("all",)} or {
        r["validator"]: r["rho_pooled"] for r in rows
    }
    ncols = min(4, max(1, len(names)))
    nrows = math.ceil(len(names) / ncols) if names else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.0 * nrows), squeeze=False)
    groups = sorted({c.group for c in curves})
    colors = plt.get_cmap("tab10")
    for ax, name in zip(axes.flat, names, strict=False):
        for gi, group in enumerate(groups):
            members = [c for c in curves if c.group == group]
            x = np.concatenate([c.column(PREFIX + name) for c in members])
            y = np.concatenate([c.column(TARGET) for c in members])
            ax.scatter(x, 100 * y, s=8, alpha=0.5, color=colors(gi % 10), label=group)
        rho = pooled.get(name, math.nan)
        sense = VALIDATORS[name].direction if name in VALIDATORS else "?"
        ax.set_title(f"{name} ({sense}), oriented ρ={_rho(rho)}", fontsize=9)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel(f"target val acc % {MARK}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if groups:
        axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle(
        f"Validators vs target-validation accuracy {MARK} (target labels only score the "
        "validators)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def build_validator_study(
    dirs: Iterable[str | os.PathLike], out: str | os.PathLike, figures: bool = True
) -> dict[str, Any]:
    """Run the study on every run under ``dirs``; write the outputs into ``out``."""
    from .core import NoResultsError

    folders = [Path(d) for d in dirs]
    curves = load_curves(d for d in folders if d.exists())
    if not curves:
        raise NoResultsError(
            "no Lightning metrics.csv with val/target/acc under: "
            + ", ".join(str(d) for d in folders)
        )
    rows = study_rows(curves)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = study_markdown(rows, len(curves))
    if not rows:
        markdown += (
            "\nNo val/validator/* columns found: the runs were trained without "
            "galda.validators.ValidatorCallback.\n"
        )
    files = {
        "validators.md": atomic_write_text(out / "validators.md", markdown),
        "validators.csv": atomic_write_text(out / "validators.csv", study_csv(rows)),
    }
    if figures and rows:
        import matplotlib.pyplot as plt

        fig = draw_scatter(curves, rows)
        for suffix in ("png", "pdf"):
            name = f"validators_scatter.{suffix}"
            files[name] = atomic_savefig(fig, out / name, dpi=150)
        plt.close(fig)
    return {"rows": rows, "curves": curves, "markdown": markdown, "files": files}


def main(args: argparse.Namespace) -> int:
    """The ``--validators`` branch of ``python -m galda.report``."""
    from .core import NoResultsError

    try:
        rep = build_validator_study(args.dirs, args.out, figures=args.figures)
    except NoResultsError as exc:
        print(f"galda.report: {exc}", file=sys.stderr)
        return 1
    print(rep["markdown"])
    print(f"{len(rep['curves'])} runs read. Written to {os.path.abspath(args.out)}:")
    for path in rep["files"].values():
        print(f"  {path}")
    return 0
