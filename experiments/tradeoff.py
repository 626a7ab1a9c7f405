"""Source against target test accuracy for every setting tried on the small set (60 epochs): the
figure behind experiments/README.md §0g.

    python experiments/tradeoff.py            # writes experiments/defaults60/tradeoff.{png,pdf,csv}

Each point is the mean over the seeds on disk (error bars: standard deviation; n in the table). The
settings were chosen with source data and unlabelled target data only; the target axis is read
afterwards (‡). Runs span several commits, each folder's multirun.yaml and results.json say which.
"""

from __future__ import annotations

import csv
import glob
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent / "defaults60"

#: (label, family, results.json glob under defaults60/)
GROUPS: list[tuple[str, str, str]] = [
    ("no adaptation", "baseline", "speed_defaults_60ep/runs/baseline_seed*"),
    ("no adaptation, width 2", "baseline", "width2_60ep/baseline_seed*"),
    ("mixed-batch BN control", "control", "runs/bnmix_seed*"),
    ("MMD (default)", "mmd", "speed_defaults_60ep/runs/mmd_seed*"),
    ("MMD, affine DSBN", "mmd", "dsbn_affine_60ep/mmd_seed*"),
    ("MMD, λ = 0.3", "mmd", "lambda03_60ep/mmd_seed*"),
    ("MMD, align=target", "mmd", "align_target_60ep/mmd_seed*"),
    ("MMD, penultimate layer", "mmd", "penultimate_60ep/mmd_seed*"),
    ("MMD, width 2", "mmd", "width2_60ep/mmd_seed*"),
    ("DANN (default: affine DSBN)", "dann", "dsbn_affine_60ep/dann_seed*"),
    ("DANN, DSBN statistics", "dann", "speed_defaults_60ep/runs/dann_seed*"),
    ("DANN, mixed batches", "dann", "dann_mixed_bn_60ep/dann_seed*"),
    ("DANN, λ = 0.3", "dann", "lambda03_60ep/dann_seed*"),
    ("DANN, λ = 0.1", "dann", "lambda_small_60ep/lambda0.1/dann_seed*"),
    ("DANN, λ = 0.03", "dann", "lambda_small_60ep/lambda0.03/dann_seed*"),
    ("DANN, align=target", "dann", "align_target_60ep/dann_seed*"),
    ("DANN, penultimate layer", "dann", "penultimate_60ep/dann_seed*"),
    ("DANN, width 2", "dann", "width2_60ep/dann_seed*"),
    ("DANN, affine, width 2", "dann", "width2_affine_60ep/dann_seed*"),
    ("DANN, affine, target stem", "dann", "target_stem_screen/dann_seed*"),
    ("DANN, affine, weight EMA", "dann", "ema_screen/dann_seed*"),
    ("DANN, affine, rate floor lr/100", "dann", "lr_floor_screen/dann_seed*"),
    ("joint oracle ‡", "ceiling", "runs/oracle_joint_seed*"),
]
STYLE = {
    "baseline": ("black", "s"),
    "control": ("grey", "D"),
    "mmd": ("tab:blue", "o"),
    "dann": ("tab:red", "^"),
    "ceiling": ("tab:green", "*"),
}


def _group(pattern: str) -> tuple[list[float], list[float], list[int]]:
    source, target, seeds = [], [], []
    for path in sorted(glob.glob(str(HERE / pattern / "results.json"))):
        r = json.loads(Path(path).read_text())
        source.append(100 * r["test/source/acc"])
        target.append(100 * r["test/target/acc"])
        seeds.append(int(r["seed"]))
    return source, target, seeds


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    rows = []
    for label, family, pattern in GROUPS:
        source, target, seeds = _group(pattern)
        if source:
            rows.append((label, family, source, target, seeds))
    base = next(r for r in rows if r[0] == "no adaptation")
    goal_source = statistics.mean(base[2]) - 2
    goal_target = statistics.mean(base[3]) + 15
    fig, ax = plt.subplots(figsize=(12, 6.5))
    # issue 12's goal: source within 2 points of the baseline and target 15 points above it
    ax.fill_between([goal_target, 90], goal_source, 95, color="tab:green", alpha=0.10, lw=0)
    ax.axhline(goal_source, color="tab:green", ls="--", lw=1)
    ax.axvline(goal_target, color="tab:green", ls=":", lw=1)
    ax.text(
        goal_target + 0.3,
        goal_source + 0.3,
        "goal (issue 12): source ≥ baseline − 2,\ntarget ≥ baseline + 15",
        fontsize=8,
        color="tab:green",
        va="bottom",
    )
    wide = next((r for r in rows if r[0] == "no adaptation, width 2"), None)
    if wide is not None:  # the same goal for the width-2 rows, against the width-2 baseline
        ax.axhline(statistics.mean(wide[2]) - 2, color="black", ls="--", lw=0.8, alpha=0.5)
        ax.text(
            46, statistics.mean(wide[2]) - 2 + 0.2, "width-2 baseline − 2", fontsize=7, alpha=0.7
        )
    with open(HERE / "tradeoff.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            ["setting", "n", "seeds", "source_mean", "source_sd", "target_mean_dagger", "target_sd"]
        )
        for k, (label, family, source, target, seeds) in enumerate(rows, start=1):
            colour, marker = STYLE[family]
            xs, ys = statistics.mean(target), statistics.mean(source)
            ax.errorbar(
                xs,
                ys,
                xerr=_sd(target),
                yerr=_sd(source),
                fmt=marker,
                color=colour,
                ms=9 if marker == "*" else 6,
                capsize=2,
                lw=0.8,
                label=f"{k:>2}  {label} (n={len(seeds)})",
            )
            ax.annotate(
                str(k),
                (xs, ys),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=7,
                color=colour,
            )
            out.writerow(
                [
                    label,
                    len(seeds),
                    " ".join(map(str, seeds)),
                    f"{ys:.1f}",
                    f"{_sd(source):.1f}",
                    f"{xs:.1f}",
                    f"{_sd(target):.1f}",
                ]
            )
    ax.set_xlabel("target test accuracy, % ‡ (read after every choice)")
    ax.set_ylabel("source test accuracy, %")
    ax.set_title("Small set, DeepMerge, 60 epochs: every setting tried for the source cost")
    ax.set_xlim(45, 90)
    ax.set_ylim(74, 93)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7.5, frameon=False)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(HERE / f"tradeoff.{ext}", dpi=150)
    print(f"wrote {HERE / 'tradeoff.png'} ({len(rows)} settings)")


if __name__ == "__main__":
    main()
