"""The SLURM launcher's path end to end through submitit's local executor (no cluster needed).

``hydra/launcher=slurm_local`` is hydra-submitit-launcher with submitit's local executor: the same
job function is pickled, each sweep job runs as its own submitit job (a separate process), and each
writes its results.json."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("submitit")


@pytest.mark.slow
def test_sweep_through_submitit_local_executor(sim_data_dir, tmp_path):
    seeds = (3, 7)
    cmd = [
        sys.executable,
        "-m",
        "galda.run",
        "-m",
        "hydra/launcher=slurm_local",
        "hydra.launcher.timeout_min=10",
        "data=tiny",
        f"paths.data_dir={sim_data_dir}",
        "model=tiny",
        f"seed={','.join(map(str, seeds))}",
        "trainer.max_epochs=1",
        "logger=none",
        "callbacks.progress_bar=null",
        f"paths.log_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "multirun" / "default"
    found = sorted(sweep.glob("*/results.json"))
    assert len(found) == len(seeds)
    runs = {json.loads(p.read_text())["seed"]: p for p in found}
    assert set(runs) == set(seeds)
    for seed, path in runs.items():
        res = json.loads(path.read_text())
        assert res["status"] == "complete", res.get("error")
        assert f"seed={seed}" in path.parent.name  # the job's own folder, by its overrides
        assert f"seed={seed}" in res["overrides"]
        assert 0.0 <= res["test/source/acc"] <= 1.0
    # one submitit job per sweep job, each with its pickled call and its pickled result
    jobs = [d for d in (sweep / ".submitit").iterdir() if list(d.glob("*_submitted.pkl"))]
    assert len(jobs) == len(seeds)
    for job in jobs:
        assert list(job.glob("*_0_result.pkl")), f"no result pickle in {job}"
        log = "".join(p.read_text() for p in job.glob("*_0_log.*"))
        assert "Job completed successfully" in log
    assert "LocalLauncher" in (sweep / "multirun.yaml").read_text()
