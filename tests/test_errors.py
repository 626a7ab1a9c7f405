"""Bad inputs and settings, and the message each gets: the cases behind docs/errors.md.

Every row of the table in docs/errors.md names a case of :data:`CASES` below; the test runs the
case and checks the row's exit status and that every `quoted` fragment of its message column is
in the message the code gives. A case without a row, or a row without a case, fails the test, so
the table stays true when messages change. Further tests check what each case leaves on disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from galda.errors import GaldaError
from tests.conftest import REPO
from tests.test_preflight import write_pair

DOC = REPO / "docs" / "errors.md"


# ------------------------------------------------------------------------------------ helpers


class Ctx:
    """What a case needs: a scratch folder, the config composer, pytest's fixtures."""

    def __init__(self, tmp_path: Path, compose_cfg, capsys, caplog, monkeypatch) -> None:
        self.tmp = tmp_path
        self.compose = compose_cfg
        self.capsys = capsys
        self.caplog = caplog
        self.monkeypatch = monkeypatch

    def cfg(self, *overrides: str, files: tuple[Path, Path] | None = None, **pair):
        src, tgt = files or write_pair(self.tmp / "data", **pair)
        return self.compose(
            "data=tiny",
            "model=tiny",
            "logger=none",
            "data.simulate=null",
            f"data.source_path={src}",
            f"data.target_path={tgt}",
            *overrides,
        )


def run_checks(ctx: Ctx, cfg) -> tuple[int, str]:
    """The checks ``train()`` makes before training, with ``galda.run``'s exit status."""
    from hydra.utils import instantiate

    from galda.preflight import preflight, preflight_config
    from galda.provision import datamodule_config

    with ctx.caplog.at_level(logging.WARNING, logger="galda"):
        try:
            preflight_config(cfg)
            preflight(cfg, instantiate(datamodule_config(cfg.data), _convert_="all"))
        except GaldaError as err:
            return 2, str(err)
    return 0, ctx.caplog.text


def setting(*overrides: str, **pair) -> Callable[[Ctx], tuple[int, str]]:
    return lambda ctx: run_checks(ctx, ctx.cfg(*overrides, **pair))


def ingest(ctx: Ctx, *args: str) -> tuple[int, str]:
    from galda.ingest.cli import main

    ctx.capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, ctx.capsys.readouterr().err


def report(ctx: Ctx, *args: str) -> tuple[int, str]:
    from galda.report.__main__ import main

    ctx.capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, ctx.capsys.readouterr().err


def fail_writes(monkeypatch, code: int) -> None:
    """Every atomic write (results, report, HDF5) fails as the OS would with ``code``."""

    def refuse(*args, **kwargs):
        raise OSError(
            code, os.strerror(code), kwargs.get("dir") or (args[2] if len(args) > 2 else None)
        )

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def npy_input(ctx: Ctx) -> Path:
    x = ctx.tmp / "X.npy"
    np.save(x, np.random.default_rng(0).normal(size=(6, 3, 16, 16)).astype(np.float32))
    return x


def a_run(ctx: Ctx) -> Path:
    from tests.test_report import write_run

    write_run(ctx.tmp / "runs", "small", "deepmerge", "baseline", 1)
    return ctx.tmp / "runs"


# --------------------------------------------------------------------------------------- cases


def _small_split(ctx):
    return run_checks(ctx, ctx.cfg(n_galaxies=3))


def _unlabelled_target(*overrides):
    def case(ctx):
        src, tgt = write_pair(ctx.tmp / "u", labelled_target=False)
        return run_checks(ctx, ctx.cfg(*overrides, files=(src, tgt)))

    return case


def _unlabelled_source(ctx):
    src, tgt = write_pair(ctx.tmp / "u", labelled_source=False)
    return run_checks(ctx, ctx.cfg(files=(src, tgt)))


def _swapped(ctx):
    src, tgt = write_pair(ctx.tmp / "s")
    return run_checks(ctx, ctx.cfg(files=(tgt, src)))


def _same_file(ctx):
    src, _ = write_pair(ctx.tmp / "s")
    return run_checks(ctx, ctx.cfg(files=(src, src)))


def _missing_file(ctx):
    cfg = ctx.compose("data=simsim", f"paths.data_dir={ctx.tmp / 'nowhere'}", "logger=none")
    return run_checks(ctx, cfg)


def _corrupt_checkpoint(ctx):
    from galda.checkpointing import check_checkpoint

    path = ctx.tmp / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    buf = _checkpoint_bytes()
    path.write_bytes(buf[: len(buf) // 2])
    try:
        check_checkpoint(path)
    except GaldaError as err:
        return 2, str(err)
    return 0, ""


def _checkpoint_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(
        {
            "state_dict": {"w": torch.zeros(64, 64)},
            "epoch": 3,
            "global_step": 30,
            "pytorch-lightning_version": "2",
        },
        buf,
    )
    return buf.getvalue()


def _ingest_out_is_input(ctx):
    x = npy_input(ctx)
    return ingest(ctx, "npy", "--x", x, "--domain", "target", "--out", x, "--force", "-q")


def _ingest_write_fails(code):
    def case(ctx):
        x = npy_input(ctx)
        fail_writes(ctx.monkeypatch, code)
        return ingest(
            ctx, "npy", "--x", x, "--domain", "target", "--out", ctx.tmp / "o" / "t.h5", "-q"
        )

    return case


def _report_no_results(ctx):
    (ctx.tmp / "empty").mkdir()
    return report(ctx, ctx.tmp / "empty", "--out", ctx.tmp / "out")


def _report_write_fails(code):
    def case(ctx):
        runs = a_run(ctx)
        fail_writes(ctx.monkeypatch, code)
        return report(ctx, runs, "--out", ctx.tmp / "out", "--no-figures")

    return case


def _report_out_is_file(ctx):
    runs = a_run(ctx)
    (ctx.tmp / "taken").write_text("x")
    return report(ctx, runs, "--out", ctx.tmp / "taken", "--no-figures")


def _report_strict_unreadable(ctx):
    runs = a_run(ctx)
    (runs / "broken").mkdir()
    (runs / "broken" / "results.json").write_text("{")
    return report(ctx, runs, "--out", ctx.tmp / "out", "--no-figures", "--strict")


def _sweep_failed(ctx):
    from galda.hydra_callbacks import exit_status, format_summary, summarise_sweep

    sweep = ctx.tmp / "sweep"
    for seed in (1, 2):
        job = sweep / f"seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text("seed: 1\n")
        (job / "results.json").write_text(
            json.dumps(
                {"status": "failed", "error": "DataMissingError: data set 'simsim': file not found"}
            )
        )
    outcomes = summarise_sweep(sweep)
    return exit_status(outcomes), format_summary(outcomes, sweep)


def _run_unwritable(ctx):
    from tests.test_output_errors import _tiny_run, galda_run

    ro = ctx.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        run = f"hydra.run.dir={ro / 'run'}"
        proc = galda_run(ctx.tmp, *_tiny_run(ctx.tmp), run, deny_dir=ro)
    finally:
        ro.chmod(0o755)
    return proc.returncode, proc.stdout + proc.stderr


def _run_disk_full_at_start(ctx):
    from tests.oswrites import deny

    cfg = ctx.cfg()
    deny(cfg.paths.output_dir, errno.ENOSPC, patch=ctx.monkeypatch.setattr)
    return run_checks(ctx, cfg)


def _run_disk_full_later(ctx):
    from tests.test_output_errors import _tiny_run, galda_run

    run = ctx.tmp / "run"
    run.mkdir()
    skip = ".galda-write-probe.,.hydra"
    args = (*_tiny_run(ctx.tmp), f"hydra.run.dir={run}")
    proc = galda_run(ctx.tmp, *args, deny_dir=run, code=errno.ENOSPC, skip=skip)
    return proc.returncode, proc.stdout + proc.stderr


def predict(ctx: Ctx, *args: str) -> tuple[int, str]:
    from galda.predict.cli import main

    ctx.capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, ctx.capsys.readouterr().err


def _predict_inputs(ctx) -> tuple[Path, Path]:
    from tests.test_predict import make_checkpoint, raw_images

    ckpt, _ = make_checkpoint(ctx.tmp / "m.ckpt")
    np.save(ctx.tmp / "x.npy", raw_images(4))
    return ckpt, ctx.tmp / "x.npy"


def _predict_write_fails(code, skip=""):
    def case(ctx):
        from tests.oswrites import deny

        ckpt, x = _predict_inputs(ctx)
        (ctx.tmp / "o").mkdir()
        deny(ctx.tmp / "o", code, skip=skip, patch=ctx.monkeypatch.setattr)
        return predict(ctx, ckpt, x, "--out", ctx.tmp / "o" / "cat.csv", "-q")

    return case


def _predict_out_is_checkpoint(ctx):
    ckpt, x = _predict_inputs(ctx)
    out = ctx.tmp / "m.fits"
    ckpt.rename(out)
    return predict(ctx, out, x, "--out", out, "--force", "-q")


CASES: dict[str, Callable[[Ctx], tuple[int, str]]] = {
    "batch-size": setting("data.batch_size=0"),
    "learning-rate": setting("optim.optimizer.lr=-0.001"),
    "seed": setting("seed=-1"),
    "epochs": setting("trainer.max_epochs=0"),
    "split-fraction-zero": setting("data.split_fractions=[0.7,0.0,0.3]"),
    "split-fraction-sum": setting("data.split_fractions=[0.5,0.2,0.2]"),
    "monitor-typo": setting("selection.monitor=val/source/accuracy"),
    "monitor-mode": setting("selection.mode=min"),
    "monitor-validator-no-callback": setting(
        "selection.monitor=val/validator/snd", "callbacks.validators=null"
    ),
    "split-too-small": _small_split,
    "image-size": setting("model=deepmerge", size=64),
    "bands": setting(channels=4),
    "monitor-target-unlabelled": _unlabelled_target("selection.monitor=val/target/acc"),
    "monitor-target-labelled": setting("selection.monitor=val/target/acc"),
    "oracle-unlabelled-target": _unlabelled_target("method=oracle"),
    "source-unlabelled": _unlabelled_source,
    "files-swapped": _swapped,
    "file-wrong-role": setting(roles=("target", "target")),
    "same-file": _same_file,
    "out-of-core-on-device": setting("data.out_of_core=true", "data.on_device=true"),
    "paired-sizes-differ": setting(n_target=40),
    "data-missing": _missing_file,
    "checkpoint-corrupt": _corrupt_checkpoint,
    "ingest-out-is-input": _ingest_out_is_input,
    "ingest-permission": _ingest_write_fails(errno.EACCES),
    "ingest-disk-full": _ingest_write_fails(errno.ENOSPC),
    "report-no-results": _report_no_results,
    "report-permission": _report_write_fails(errno.EACCES),
    "report-disk-full": _report_write_fails(errno.ENOSPC),
    "report-out-is-file": _report_out_is_file,
    "report-strict-unreadable": _report_strict_unreadable,
    "sweep-jobs-failed": _sweep_failed,
    "run-permission": _run_unwritable,
    "run-disk-full": _run_disk_full_at_start,
    "run-disk-full-later": _run_disk_full_later,
    "predict-permission": _predict_write_fails(errno.EACCES),
    "predict-disk-full": _predict_write_fails(errno.ENOSPC, skip=".galda-write-probe."),
    "predict-out-is-input": _predict_out_is_checkpoint,
}


def doc_rows() -> list[tuple[str, int, list[str]]]:
    """(case, exit status, quoted fragments) for each row of the table in docs/errors.md."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 4 or not cells[0].startswith("`") or cells[0] == "case":
            continue
        case = cells[0].strip("`")
        status = int(re.match(r"\d+", cells[3]).group(0))
        quoted = re.findall(r"`([^`]+)`", cells[2])
        fragments = [part.strip() for f in quoted for part in f.split("<file>") if part.strip()]
        rows.append((case, status, fragments))
    return rows


def test_table_names_every_case_once():
    names = [r[0] for r in doc_rows()]
    assert len(names) == len(set(names)), "a case appears twice in docs/errors.md"
    assert set(names) == set(CASES), set(names) ^ set(CASES)


@pytest.mark.parametrize("case, status, fragments", doc_rows(), ids=[r[0] for r in doc_rows()])
def test_documented_message(
    case, status, fragments, tmp_path, compose_cfg, capsys, caplog, monkeypatch
):
    assert fragments, f"row {case} quotes no message"
    code, message = CASES[case](Ctx(tmp_path, compose_cfg, capsys, caplog, monkeypatch))
    assert code == status, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in message


# ---------------------------------------------------------------------- what each leaves behind


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ingest_output_equal_to_an_input_is_refused_before_work(tmp_path, capsys):
    from galda.ingest.cli import main

    x = tmp_path / "X.npy"
    np.save(x, np.ones((4, 3, 8, 8), np.float32))
    y = tmp_path / "y.npy"
    np.save(y, np.array([0, 1, 0, 1]))
    link = tmp_path / "link.npy"
    link.symlink_to(x)
    before = {p: _digest(p) for p in (x, y)}
    attempts = [
        ["--out", x, "--force"],  # the images themselves
        ["--out", link, "--force"],  # a link resolving to them
        ["--out", y, "--force"],  # the labels
    ]
    for extra in attempts:
        rc = main(
            ["npy", "--x", str(x), "--y", str(y), "--domain", "source", "-q", *map(str, extra)]
        )
        err = capsys.readouterr().err
        assert rc == 2 and "output would replace one of the inputs" in err, err
    assert {p: _digest(p) for p in before} == before
    # --match naming the output is refused too
    from galda.ingest import ingest_npy

    first = ingest_npy(x, tmp_path / "s.h5", domain="source", y=y)
    digest = _digest(first)
    rc = main(
        [
            "npy",
            "--x",
            str(x),
            "--domain",
            "target",
            "--out",
            str(first),
            "--match",
            str(first),
            "--force",
            "-q",
        ]
    )
    assert rc == 2 and "output would replace one of the inputs" in capsys.readouterr().err
    assert _digest(first) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "link.npy", "s.h5", "y.npy"]


@pytest.mark.parametrize(
    "code, words",
    [(errno.EACCES, "permission denied"), (errno.ENOSPC, "no space left on the device")],
)
def test_ingest_write_errors_leave_nothing(tmp_path, capsys, monkeypatch, code, words):
    from galda.data.h5format import DomainWriter
    from galda.ingest.cli import main

    x = tmp_path / "X.npy"
    np.save(x, np.ones((6, 3, 8, 8), np.float32))
    out = tmp_path / "o" / "t.h5"
    assert main(["npy", "--x", str(x), "--domain", "target", "--out", str(out), "-q"]) == 0
    before = _digest(out)
    real_write = DomainWriter.write

    def write_then_fail(self, start, *args, **kwargs):  # fails after the file is open
        real_write(self, start, *args, **kwargs)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(DomainWriter, "write", write_then_fail)
    capsys.readouterr()
    rc = main(["npy", "--x", str(x), "--domain", "target", "--out", str(out), "--force", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"galda.ingest: error: {out}: cannot write: {words}"), err
    assert _digest(out) == before  # the old output is untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["t.h5"]  # no temporary file


def test_ingest_pair_write_error_names_the_final_path(tmp_path, capsys, monkeypatch):
    from galda.data.h5format import DomainWriter
    from galda.ingest.cli import main
    from tests.test_ingest import SIMSIM, make_set

    make_set(tmp_path / "dm", SIMSIM, n=4)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(DomainWriter, "write", full)
    rc = main(["deepmerge", str(tmp_path / "dm"), "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path / 'out' / 'source.h5'}: cannot write: no space left" in err
    assert list((tmp_path / "out").iterdir()) == []  # staging folder removed


def test_ingest_unwritable_folder_refused_before_scanning(tmp_path, capsys, monkeypatch):
    from galda.ingest import convert
    from galda.ingest.cli import main

    x = tmp_path / "X.npy"
    np.save(x, np.ones((6, 3, 8, 8), np.float32))
    scanned = []
    monkeypatch.setattr(convert, "scan", lambda *a, **k: scanned.append(1))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a read-only folder
    rc = main(["npy", "--x", str(x), "--domain", "target", "--out", str(tmp_path / "t.h5"), "-q"])
    assert rc == 2 and "cannot write: permission denied" in capsys.readouterr().err
    assert not scanned and not (tmp_path / "t.h5").exists()


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
        (errno.ENOSPC, "no space left on the device"),
    ],
)
def test_report_write_errors(tmp_path, capsys, monkeypatch, code, words):
    from galda.report.__main__ import main
    from tests.test_report import write_run

    write_run(tmp_path / "runs", "small", "deepmerge", "baseline", 1)
    out = tmp_path / "out"
    out.mkdir()
    fail_writes(monkeypatch, code)
    rc = main([str(tmp_path / "runs"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{out / 'table1.md'}: cannot write: {words}" in err
    assert list(out.iterdir()) == []


def test_report_cannot_create_its_folder(tmp_path, capsys, monkeypatch):
    from galda.report.__main__ import main
    from tests.test_report import write_run

    write_run(tmp_path / "runs", "small", "deepmerge", "baseline", 1)

    def refuse(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    rc = main([str(tmp_path / "runs"), "--out", str(tmp_path / "ro" / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot create the report folder: permission denied" in err


# --------------------------------------------------------------------------------- checkpoints


def test_check_checkpoint(tmp_path):
    from galda.checkpointing import check_checkpoint

    good = tmp_path / "good.ckpt"
    good.write_bytes(_checkpoint_bytes())
    check_checkpoint(good)  # no error
    for name, payload, words in [
        ("truncated.ckpt", _checkpoint_bytes()[:1000], "truncated or corrupt"),
        ("empty.ckpt", b"", "truncated or corrupt"),
        ("text.ckpt", b"not a checkpoint at all", "truncated or corrupt"),
    ]:
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(GaldaError) as info:
            check_checkpoint(path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: ") and words in msg and "\n" not in msg
        assert "resume=false" in msg and "delete the file" in msg
    foreign = tmp_path / "weights.ckpt"
    torch.save({"w": torch.zeros(2)}, foreign)
    with pytest.raises(GaldaError, match="not a Lightning checkpoint"):
        check_checkpoint(foreign)
    with pytest.raises(GaldaError, match="checkpoint not found; give another ckpt_path"):
        check_checkpoint(tmp_path / "absent.ckpt", ways_out="give another ckpt_path")


# ----------------------------------------------------------------------------- failing sweeps


def _job(sweep: Path, name: str, results: dict | str | None) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("seed: 1\n")
    if results is not None:
        text = results if isinstance(results, str) else json.dumps(results)
        (job / "results.json").write_text(text)
    return job


def test_sweep_summary_names_failed_jobs(tmp_path, capsys):
    from omegaconf import OmegaConf

    from galda.hydra_callbacks import SweepSummary

    sweep = tmp_path / "sweep"
    old = _job(sweep, "method=mmd,seed=9", {"status": "failed", "error": "RuntimeError: old"})
    past = time.time() - 3600
    for p in (old / "results.json", old / ".hydra" / "config.yaml"):
        os.utime(p, (past, past))
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    cb = SweepSummary()
    cb.on_multirun_start(cfg)
    _job(sweep, "method=baseline,seed=1", {"status": "complete"})
    _job(sweep, "method=baseline,seed=2", {"status": "smoke"})
    cb.on_multirun_end(cfg)  # all jobs of this sweep finished: no exit, nothing printed
    assert capsys.readouterr().err == ""

    _job(
        sweep,
        "method=dann,seed=1",
        {"status": "failed", "error": "ConfigError: seed=-1: must be ...\nmore"},
    )
    with pytest.raises(SystemExit) as info:
        cb.on_multirun_end(cfg)
    assert info.value.code == 2  # only bad settings failed
    err = capsys.readouterr().err
    assert "1 of 3 job(s)" in err and "method=dann,seed=1: ConfigError: seed=-1" in err
    assert "more" not in err and "seed=9" not in err  # first line only; older sweep ignored

    _job(sweep, "method=dann,seed=2", None)  # killed before writing results
    _job(sweep, "method=dann,seed=3", "{trunc")
    _job(sweep, "method=dann,seed=4", {"status": "failed", "error": "RuntimeError: CUDA OOM"})
    with pytest.raises(SystemExit) as info:
        cb.on_multirun_end(cfg)
    assert info.value.code == 1  # an unexpected failure
    err = capsys.readouterr().err
    assert "4 of 6 job(s)" in err
    assert "method=dann,seed=2: no results.json: the job was killed" in err
    assert "method=dann,seed=3: unreadable results.json" in err
    assert "method=dann,seed=4: RuntimeError: CUDA OOM" in err


def test_sweep_callback_registered():
    import yaml

    cfg = yaml.safe_load((REPO / "conf" / "hydra" / "default.yaml").read_text())
    targets = [c["_target_"] for c in cfg["callbacks"].values()]
    assert "galda.hydra_callbacks.SweepSummary" in targets


@pytest.mark.slow
def test_multirun_where_every_job_fails_exits_non_zero(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "galda.run",
            "-m",
            "data=simsim",
            f"paths.data_dir={tmp_path / 'nodata'}",
            "seed=1,2",
            "logger=none",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "2 of 2 job(s) of the sweep" in proc.stderr
    for seed in (1, 2):
        assert re.search(
            rf"seed={seed}: DataMissingError: data set 'simsim': file not found", proc.stderr
        )
    results = sorted((tmp_path / "logs").rglob("results.json"))
    assert [json.loads(p.read_text())["status"] for p in results] == ["failed", "failed"]
    assert not list((tmp_path / "logs").rglob("*.ckpt"))
