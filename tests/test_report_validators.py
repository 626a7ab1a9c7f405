"""The validator study (python -m galda.report --validators) on synthetic Lightning metrics.csv."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from galda.report.__main__ import main
from galda.report.validators import build_validator_study, read_metrics_csv, spearman

TARGET = [0.60, 0.70, 0.80, 0.75, 0.65]  # target-validation accuracy per epoch
SOURCE = [0.90, 0.80, 0.70, 0.95, 0.85]  # source accuracy: peaks at epoch 3 (target 0.75)


def write_metrics(
    run: Path,
    method: str,
    target,
    source,
    validators: dict[str, list[float]],
    monitor: str | None = None,
    test_acc: float | None = None,
) -> Path:
    """A CSVLogger-like file: train rows and validation rows with empty cells elsewhere."""
    keys = ["val/source/acc", "val/target/acc", *(f"val/validator/{k}" for k in validators)]
    header = ["epoch", "step", "train/loss_epoch", *keys]
    (run / "csv").mkdir(parents=True, exist_ok=True)
    with open(run / "csv" / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        for e in range(len(target)):
            w.writerow({"epoch": e, "step": 10 * e + 9, "train/loss_epoch": 0.5})
            row = {
                "epoch": e,
                "step": 10 * e + 9,
                "val/source/acc": source[e],
                "val/target/acc": target[e],
            }
            row.update({f"val/validator/{k}": v[e] for k, v in validators.items()})
            w.writerow(row)
        # galda.train re-validates the selected checkpoint after training, under the next epoch
        best = int(np.argmax(source))
        row = {
            "epoch": len(target),
            "step": 10 * len(target) - 1,
            "val/source/acc": source[best],
            "val/target/acc": target[best],
        }
        row.update({f"val/validator/{k}": v[best] for k, v in validators.items()})
        w.writerow(row)
    results = {
        "status": "complete",
        "data": "tiny",
        "model": "tiny",
        "method": method,
        "seed": 1,
        "selection": {"monitor": monitor or "val/source/acc", "mode": "max"},
    }
    if test_acc is not None:
        results["test/target/acc"] = test_acc
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.fixture()
def sweep(tmp_path):
    root = tmp_path / "multirun" / "study"
    t2 = [0.55, 0.58, 0.62, 0.61, 0.70]
    s2 = [0.80, 0.90, 0.85, 0.82, 0.81]
    # snd follows the target exactly; entropy (min) is 1 - target; pad (min) follows the target
    # (points the wrong way); dev is constant (no information)
    write_metrics(
        root / "a",
        "dann",
        TARGET,
        SOURCE,
        {
            "snd": [t + 1 for t in TARGET],
            "entropy": [1 - t for t in TARGET],
            "pad": TARGET,
            "dev": [0.3] * 5,
        },
        monitor="val/validator/snd",
        test_acc=0.77,
    )
    write_metrics(
        root / "b",
        "dann",
        t2,
        s2,
        {"snd": [t + 1 for t in t2], "entropy": [1 - t for t in t2], "pad": t2, "dev": [0.3] * 5},
    )
    write_metrics(root / "c", "mmd", TARGET, SOURCE, {"snd": [0.1, 0.3, 0.2, 0.5, 0.4]})
    return root


def _row(rows, group, name):
    return next(r for r in rows if r["group"] == group and r["validator"] == name)


def test_reads_every_epoch_of_a_lightning_csv(sweep):
    epochs, values = read_metrics_csv(sweep / "a" / "csv" / "metrics.csv")
    assert epochs.tolist() == [0, 1, 2, 3, 4]
    assert values["val/target/acc"].tolist() == TARGET
    assert "train/loss_epoch" not in values


def test_study_scores_validators_against_target_accuracy(sweep, tmp_path):
    rep = build_validator_study([sweep], tmp_path / "out")
    rows = rep["rows"]
    snd = _row(rows, "tiny/tiny/dann", "snd")
    assert snd["runs"] == 2 and snd["rho_run_mean"] == pytest.approx(1.0)
    assert snd["rho_pooled"] == pytest.approx(1.0)
    assert snd["acc_selected"] == pytest.approx(snd["acc_oracle"])
    assert snd["acc_selected"] == pytest.approx((0.80 + 0.70) / 2)
    # source accuracy picks epoch 3 in run a (0.75) and epoch 1 in run b (0.58)
    assert snd["acc_source_selection"] == pytest.approx((0.75 + 0.58) / 2)
    assert snd["gain_over_source"] == pytest.approx((0.80 + 0.70 - 0.75 - 0.58) / 2)
    # one folder: the best (run, epoch) of the sweep
    assert snd["sweeps"] == 1 and snd["sweep_acc_selected"] == pytest.approx(0.80)
    assert snd["test_runs"] == 1 and snd["test_acc_selected"] == pytest.approx(0.77)
    entropy = _row(rows, "tiny/tiny/dann", "entropy")  # min: 1 - target is oriented to +target
    assert entropy["direction"] == "min" and entropy["rho_run_mean"] == pytest.approx(1.0)
    assert entropy["gap_to_oracle"] == pytest.approx(0.0)
    pad = _row(rows, "tiny/tiny/dann", "pad")  # min, but it rises with the target: ρ = −1
    assert pad["rho_pooled"] == pytest.approx(-1.0)
    assert pad["acc_selected"] == pytest.approx((0.60 + 0.55) / 2)
    dev = _row(rows, "tiny/tiny/dann", "dev")  # constant: ρ undefined, first epoch selected
    assert math.isnan(dev["rho_run_mean"])
    assert dev["acc_selected"] == pytest.approx((0.60 + 0.55) / 2)
    mmd = _row(rows, "tiny/tiny/mmd", "snd")
    assert mmd["acc_selected"] == pytest.approx(0.75)  # snd peaks at epoch 3
    pooled = _row(rows, "all", "snd")
    assert pooled["runs"] == 3
    # outputs carry the target-label mark
    md = (tmp_path / "out" / "validators.md").read_text()
    assert "‡" in md and "## tiny/tiny/dann" in md and "| snd | max | 2 |" in md
    lines = (tmp_path / "out" / "validators.csv").read_text().splitlines()
    assert lines[0].startswith("# ‡") and lines[1].startswith("group,validator,direction")
    assert (tmp_path / "out" / "validators_scatter.png").stat().st_size > 10_000


def test_pooled_spearman_matches_scipy(sweep, tmp_path):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)  # with ties
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    snd = [0.1, 0.3, 0.2, 0.5, 0.4]
    rep = build_validator_study([sweep], tmp_path / "out", figures=False)
    rho = _row(rep["rows"], "tiny/tiny/mmd", "snd")["rho_pooled"]
    assert rho == pytest.approx(stats.spearmanr(snd, TARGET).statistic)


def test_cli(sweep, tmp_path, capsys):
    assert main(["--validators", str(sweep), "--out", str(tmp_path / "o"), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "Validator study ‡" in out and "3 runs read" in out
    assert not (tmp_path / "o" / "validators_scatter.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--validators", str(empty), "--out", str(tmp_path / "o2")]) == 1
