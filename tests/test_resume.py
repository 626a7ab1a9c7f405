"""Resuming: a run killed part-way continues from last.ckpt and ends where an uninterrupted run does;
a re-run sweep skips jobs whose results.json is complete."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO


def _cmd(data_dir, run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "galda.run",
        "data=tiny",
        f"paths.data_dir={data_dir}",
        "model=deepmerge",
        "method=dann",
        "trainer.max_epochs=40",
        "logger=none",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _metrics(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    return {k: v for k, v in res.items() if k.startswith(("test/", "val/"))}, res


def test_killed_run_resumes_to_the_same_result(sim_data_dir, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_cmd(sim_data_dir, reference), check=True, capture_output=True, timeout=600)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(
        _cmd(sim_data_dir, resumed),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = resumed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    # kill the whole process group as soon as the first checkpoint exists, part-way through a
    # 40-epoch run (checkpoints are written atomically, so a kill mid-save leaves the previous one)
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "results.json").exists()

    out = subprocess.run(_cmd(sim_data_dir, resumed), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Resuming from" in out.stdout + out.stderr
    ref_metrics, ref = _metrics(reference)
    res_metrics, res = _metrics(resumed)
    assert res["epochs_run"] == ref["epochs_run"] == 40
    assert res_metrics == ref_metrics


def test_rerun_sweep_skips_completed_jobs(sim_data_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "galda.run",
        "-m",
        "data=tiny",
        f"paths.data_dir={sim_data_dir}",
        "model=tiny",
        "seed=1,2",
        "trainer.fast_dev_run=true",
        "logger=none",
        "callbacks.progress_bar=null",
        f"paths.log_dir={tmp_path}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=600)
    files = sorted(tmp_path.glob("multirun/default/*/results.json"))
    stamps = [p.stat().st_mtime_ns for p in files]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0
    assert "already complete" in out.stdout + out.stderr
    assert [p.stat().st_mtime_ns for p in files] == stamps
