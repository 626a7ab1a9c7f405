"""W&B: one offline run per multirun job, never merged."""

import subprocess
import sys

from tests.conftest import REPO


def test_multirun_leaves_one_offline_wandb_run_per_job(sim_data_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "galda.run",
        "-m",
        "logger=wandb",
        "seed=1,2",
        "model=tiny",
        "data=tiny",
        f"paths.data_dir={sim_data_dir}",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        f"paths.log_dir={tmp_path}",
    ]
    env = {**__import__("os").environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_dirs = sorted(p.parent for p in tmp_path.glob("multirun/default/*/results.json"))
    assert len(job_dirs) == 2
    runs = [sorted((d / "wandb").glob("offline-run-*")) for d in job_dirs]
    assert [len(r) for r in runs] == [1, 1]  # one run in each job folder
    assert runs[0][0].name != runs[1][0].name
    # each job's CSV curves exist too (tables never depend on W&B)
    assert all((d / "csv" / "metrics.csv").exists() for d in job_dirs)
