"""The report's calibration section: ECE per domain before and after the stored temperature."""

import numpy as np

from galda.calibration import apply_temperature, expected_calibration_error
from galda.report.core import build_report
from galda.results import read_results
from galda.train import train


def test_report_writes_ece_before_and_after_temperature(compose_cfg, sim_data_dir, tmp_path):
    run = tmp_path / "runs" / "r1"
    train(
        compose_cfg(
            "data=tiny",
            "model=tiny",
            "logger=none",
            f"paths.data_dir={sim_data_dir}",
            "trainer.max_epochs=2",
            run_dir=run,
        )
    )
    results = read_results(run)
    assert results["temperature"] > 0  # fitted on source validation after training
    out = build_report([tmp_path / "runs"], tmp_path / "report")
    assert (tmp_path / "report" / "reliability.png").stat().st_size > 0
    text = (tmp_path / "report" / "calibration.md").read_text()
    with np.load(run / "predictions.npz") as p:
        raw = expected_calibration_error(p["target_probs"], p["target_labels"])
        cal = expected_calibration_error(
            apply_temperature(p["target_probs"], results["temperature"]), p["target_labels"]
        )
    row = next(line for line in text.splitlines() if line.startswith("| tiny"))
    assert f"{raw:.3f} ± 0.000 (n=1)" in row and f"{cal:.3f} ± 0.000 (n=1)" in row
    assert "calibration.md" in out["files"]
