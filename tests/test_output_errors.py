"""Outputs that cannot be written: galda.run, galda.predict, galda.ingest and galda.report end in
one line and exit 2, leave nothing half-written, and never replace an input.

A real ``chmod 0o555`` folder is used; as root (which ignores permissions) the same folder is
also made unwritable by :func:`tests.oswrites.deny`, so every test asserts the behaviour either way.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.oswrites import PRELUDE, deny
from tests.test_predict import make_checkpoint, raw_images, read_table
from tests.test_preflight import write_pair

ROOT = os.geteuid() == 0
RUN_KEYS = "(paths.log_dir, or hydra.run.dir / hydra.sweep.dir)"


@pytest.fixture()
def readonly(tmp_path, monkeypatch):
    """An existing folder nobody may write into (in this process)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if ROOT:
        deny(folder, errno.EACCES, patch=monkeypatch.setattr)
    yield folder
    folder.chmod(0o755)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def galda_run(
    cwd: Path, *overrides: str, deny_dir: Path | None = None, code: int = errno.EACCES, skip=""
) -> subprocess.CompletedProcess:
    """``python -m galda.run`` in a child; writes under ``deny_dir`` fail with ``code`` (as root,
    or when ``skip`` lets some through: the child patches the OS calls)."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}",
        "OMP_NUM_THREADS": "1",
    }
    if deny_dir is not None and (ROOT or code != errno.EACCES or skip):
        env |= {
            "GALDA_TEST_DENY": str(deny_dir),
            "GALDA_TEST_DENY_ERRNO": str(code),
            "GALDA_TEST_DENY_SKIP": skip,
        }
    script = PRELUDE + (
        "import runpy\n"
        "sys.argv = ['galda.run', *sys.argv[1:]]\n"
        "runpy.run_module('galda.run', run_name='__main__', alter_sys=True)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _tiny_run(tmp_path: Path) -> list[str]:
    src, tgt = write_pair(tmp_path / "data", n_galaxies=20, size=20)
    return [
        "data=tiny",
        "model=tiny",
        "logger=none",
        "data.simulate=null",
        f"data.source_path={src}",
        f"data.target_path={tgt}",
        "trainer.fast_dev_run=true",
        "callbacks.progress_bar=null",
    ]


# ---------------------------------------------------------------------------------- galda.run


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_run_folder_that_cannot_be_written_is_refused_before_hydra_writes(tmp_path, mode):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        folder = ro / "outputs" / "job"
        flags = ["-m"] if mode == "sweep" else []  # Hydra's flags come before the overrides
        extra = ["seed=1,2"] if mode == "sweep" else []
        proc = galda_run(
            tmp_path,
            *flags,
            *_tiny_run(tmp_path),
            *extra,
            f"hydra.{mode}.dir={folder}",
            deny_dir=ro,
        )
    finally:
        ro.chmod(0o755)
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert err == (
        f"galda.run: error: {folder}: cannot write the {mode} folder: permission denied; "
        f"choose a folder you can write to or fix its permissions {RUN_KEYS}"
    )
    assert _tree(ro) == []  # nothing created, not even the folder levels the probe made


def test_run_folder_probe_leaves_a_writable_folder_as_it_was(tmp_path):
    from galda.results import probe_writable

    probe_writable(tmp_path / "a" / "b")
    assert _tree(tmp_path) == []
    (tmp_path / "keep").mkdir()
    probe_writable(tmp_path / "keep")
    assert _tree(tmp_path) == ["keep"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as info:
        probe_writable(tmp_path / "file" / "run")
    assert info.value.errno == errno.ENOTDIR
    assert _tree(tmp_path) == ["file", "keep"]


def test_preflight_refuses_an_unwritable_run_folder(compose_cfg, readonly):
    from galda.errors import GaldaError
    from galda.preflight import preflight_config

    cfg = compose_cfg("data=tiny", "model=tiny", "logger=none", run_dir=readonly / "run")
    with pytest.raises(GaldaError) as info:
        preflight_config(cfg)
    msg = str(info.value)
    assert msg.startswith(f"{readonly / 'run'}: cannot write the run folder: permission denied")
    assert "\n" not in msg and RUN_KEYS in msg
    assert _tree(readonly) == []


def test_preflight_refuses_a_read_only_checkpoints_folder(compose_cfg, tmp_path, monkeypatch):
    from galda.errors import GaldaError
    from galda.preflight import preflight_config

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    deny(run / "checkpoints", errno.EROFS, patch=monkeypatch.setattr)
    cfg = compose_cfg("data=tiny", "model=tiny", "logger=none", run_dir=run)
    with pytest.raises(GaldaError, match="checkpoints: cannot write the run folder: read-only"):
        preflight_config(cfg)


def test_run_disk_full_during_training_is_one_line_and_no_results(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # the disk fills after the up-front probe: Hydra's own files go through, galda's do not
    proc = galda_run(
        tmp_path,
        *_tiny_run(tmp_path),
        f"hydra.run.dir={run}",
        deny_dir=run,
        code=errno.ENOSPC,
        skip=".galda-write-probe.,.hydra",
    )
    output = proc.stdout + proc.stderr  # Hydra's log handler writes to stdout
    assert proc.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1, output[-3000:]
    assert errors[0].endswith(
        f"{run}: cannot write the run's outputs: no space left on the device; free some space "
        f"or choose another disk {RUN_KEYS}"
    )
    assert "Traceback" not in output
    left = [p.name for p in run.iterdir() if not p.name.startswith(".hydra")]
    assert "results.json" not in left and "predictions.npz" not in left
    assert not [p for p in run.rglob("*.tmp")]  # no half-written temporary file


def test_run_converts_only_write_errors(tmp_path):
    from galda.run import _write_problem

    run = tmp_path / "run"
    full = OSError(errno.ENOSPC, "No space left on device")
    assert "no space left" in str(_write_problem(full, run))
    inside = PermissionError(errno.EACCES, "Permission denied", str(run / "results.json"))
    assert "permission denied" in str(_write_problem(inside, run))
    data = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "source.h5"))
    assert _write_problem(data, run) is None  # a data file it cannot read: not an output
    assert _write_problem(FileNotFoundError(errno.ENOENT, "x", "y"), run) is None


# ------------------------------------------------------------------------------ galda.predict


@pytest.fixture()
def model_and_images(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    np.save(tmp_path / "x.npy", raw_images(5))
    return ckpt, tmp_path / "x.npy"


def test_predict_out_in_a_read_only_folder(model_and_images, readonly, capsys, monkeypatch):
    from galda.predict import core

    ckpt, x = model_and_images
    ran = []
    monkeypatch.setattr(core, "run_models", lambda *a, **k: ran.append(1))
    out = readonly / "cat.csv"
    from galda.predict.cli import main

    rc = main([str(ckpt), str(x), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"galda.predict: error: {out}: cannot write: permission denied")
    assert not ran and _tree(readonly) == []  # refused before any image was classified


def test_predict_disk_full_at_the_end_leaves_nothing(model_and_images, tmp_path, capsys):
    from galda.predict.cli import main

    ckpt, x = model_and_images
    outdir = tmp_path / "out"
    outdir.mkdir()
    old = outdir / "cat.fits"
    old.write_text("the previous catalogue")
    patch = pytest.MonkeyPatch()
    try:  # the probe passes; the disk is full when the catalogue is written
        deny(outdir, errno.ENOSPC, skip=".galda-write-probe.,g.png", patch=patch.setattr)
        rc = main(
            [
                str(ckpt),
                str(x),
                "--out",
                str(old),
                "--gallery",
                str(outdir / "g.png"),
                "--force",
                "-q",
            ]
        )
    finally:
        patch.undo()
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{old}: cannot write: no space left on the device" in err
    assert _tree(outdir) == ["cat.fits"] and old.read_text() == "the previous catalogue"


def test_predict_gallery_write_failure_removes_the_new_catalogue(model_and_images, tmp_path):
    from galda.predict.cli import main

    ckpt, x = model_and_images
    outdir = tmp_path / "out"
    outdir.mkdir()
    patch = pytest.MonkeyPatch()
    try:
        deny(outdir, errno.ENOSPC, skip=".galda-write-probe.,.cat.csv,cat.csv", patch=patch.setattr)
        args = ["--out", str(outdir / "cat.csv"), "--gallery", str(outdir / "g.png"), "-q"]
        rc = main([str(ckpt), str(x), *args])
    finally:
        patch.undo()
    assert rc == 2 and _tree(outdir) == []  # the catalogue written first was taken back
    assert main([str(ckpt), str(x), "--out", str(outdir / "cat.csv"), "-q"]) == 0
    assert len(read_table(outdir / "cat.csv")) == 5


def test_predict_force_gallery_failure_brings_the_previous_catalogue_back(
    model_and_images, tmp_path, capsys
):
    from galda.predict.cli import main

    ckpt, x = model_and_images
    outdir = tmp_path / "out"
    outdir.mkdir()
    old = outdir / "cat.csv"
    old.write_text("the previous catalogue")
    patch = pytest.MonkeyPatch()
    try:  # the new catalogue is written; the gallery after it finds the disk full
        deny(outdir, errno.ENOSPC, skip=".galda-write-probe.,.cat.csv,cat.csv", patch=patch.setattr)
        args = ["--out", str(old), "--gallery", str(outdir / "g.png"), "--force", "-q"]
        rc = main([str(ckpt), str(x), *args])
    finally:
        patch.undo()
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "g.png: cannot write" in err
    assert _tree(outdir) == ["cat.csv"] and old.read_text() == "the previous catalogue"
    # and when both writes succeed, the previous file's spare name is gone
    assert main([str(ckpt), str(x), *args]) == 0
    assert _tree(outdir) == ["cat.csv", "g.png"] and len(read_table(old)) == 5


@pytest.mark.parametrize("which", ["images", "checkpoint", "checkpoint of a run", "ids", "stamp"])
def test_predict_output_equal_to_an_input_is_refused(tmp_path, capsys, which):
    from astropy.io import fits

    from galda.predict.cli import main

    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    np.save(tmp_path / "x.npy", raw_images(4))
    model, images, extra = str(ckpt), str(tmp_path / "x.npy"), []
    if which == "images":  # the catalogue as the input file itself (via a link)
        images = str(tmp_path / "x.fits")
        fits.PrimaryHDU(raw_images(4)).writeto(images)
        out = tmp_path / "link.fits"
        out.symlink_to(images)
    elif which == "checkpoint":
        out = tmp_path / "m.fits"
        ckpt.rename(out)
        model = str(out)
    elif which == "checkpoint of a run":
        run = tmp_path / "run"
        (run / "checkpoints").mkdir(parents=True)
        out = run / "checkpoints" / "best.fits"
        ckpt.rename(out)
        (run / "results.json").write_text(
            json.dumps({"status": "complete", "checkpoint": str(out)})
        )
        model = str(run)
    elif which == "ids":
        out = tmp_path / "ids.csv"
        out.write_text("objid\n1\n2\n3\n4\n")
        extra = ["--ids", f"{out}:objid"]
    else:  # a stamp in a folder input
        stamps = tmp_path / "stamps"
        stamps.mkdir()
        for i, img in enumerate(raw_images(3)):
            fits.PrimaryHDU(img).writeto(stamps / f"s{i}.fits")
        images, out = str(stamps), stamps / "s1.fits"
    before = _digest(out)
    rc = main([model, images, "--out", str(out), "--force", "-q", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert f"{out}: output would replace one of the inputs" in err
    assert err.rstrip().endswith("choose another --out")
    assert _digest(out) == before


# ------------------------------------------------------------------ galda.ingest, galda.report


def test_ingest_into_a_read_only_folder(tmp_path, readonly, capsys):
    from galda.ingest.cli import main

    x = tmp_path / "X.npy"
    np.save(x, np.ones((4, 3, 8, 8), np.float32))
    out = readonly / "sub" / "t.h5"
    rc = main(["npy", "--x", str(x), "--domain", "target", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"galda.ingest: error: {out}: cannot write: permission denied")
    assert _tree(readonly) == []


@pytest.mark.parametrize("existing", [True, False])
def test_report_into_a_read_only_folder(tmp_path, readonly, capsys, existing):
    from galda.report.__main__ import main
    from tests.test_report import write_run

    write_run(tmp_path / "runs", "small", "deepmerge", "baseline", 1)
    out = readonly if existing else readonly / "report"
    rc = main([str(tmp_path / "runs"), "--out", str(out), "--no-figures"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "permission denied" in err and str(out) in err
    assert _tree(readonly) == []
