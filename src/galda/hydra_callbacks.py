"""Hydra callbacks: a sweep whose jobs failed ends with a summary and a non-zero exit status.

A failing job does not stop a multirun (``galda.run`` records it in its ``results.json`` and the
other jobs go on), so without this the sweep would exit 0 and ``make`` or CI would see success.
:class:`SweepSummary` runs after the last job: it reads every job folder of this sweep under
``hydra.sweep.dir``, prints which jobs failed and why, and exits with status 2 when every
failure was bad input or settings (``GaldaError``), else 1. Registered in
``conf/hydra/default.yaml``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from galda.errors import RUN_FOLDER_KEYS, cannot_write
from galda.results import RESULTS_FILE, probe_writable

#: GaldaError subclasses defined in modules the sweep's parent process may not have imported
_USER_ERROR_NAMES = {
    "GaldaError",
    "ConfigError",
    "DataError",
    "DataMissingError",
    "NoResultsError",
    "ReportWriteError",
}
_CLOCK_SLACK_S = 1.0  # file times vs time.time() on network file systems


@dataclass
class JobOutcome:
    """One job folder of a sweep: ``ok`` False with the reason when it failed."""

    run_dir: Path
    ok: bool
    status: str
    reason: str = ""
    user_error: bool = False


def _user_error_names() -> set[str]:
    from galda.errors import GaldaError

    names = set(_USER_ERROR_NAMES)
    todo = [GaldaError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def _job_dirs(sweep_dir: Path, since: float) -> list[Path]:
    """Folders of jobs that ran in this sweep (Hydra's ``.hydra/`` or a results file, fresh)."""
    found = set()
    for root, subdirs, files in os.walk(sweep_dir, followlinks=False):
        here = Path(root)
        marker = here / ".hydra" / "config.yaml"
        if ".hydra" in subdirs and marker.is_file() and marker.stat().st_mtime >= since:
            found.add(here)
        if RESULTS_FILE in files and (here / RESULTS_FILE).stat().st_mtime >= since:
            found.add(here)
        subdirs[:] = [s for s in subdirs if not s.startswith(".") and s != "checkpoints"]
    return sorted(found)


def job_outcome(run_dir: Path, user_errors: set[str] | None = None) -> JobOutcome:
    """Whether the job in ``run_dir`` finished, from its ``results.json``."""
    user_errors = user_errors if user_errors is not None else _user_error_names()
    path = run_dir / RESULTS_FILE
    log_files = sorted(run_dir.glob("*.log"))
    see = f" (see {log_files[0]})" if log_files else ""
    if not path.is_file():
        reason = f"no {RESULTS_FILE}: the job was killed or crashed before writing it{see}"
        return JobOutcome(run_dir, False, "missing", reason)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return JobOutcome(run_dir, False, "unreadable", f"unreadable {RESULTS_FILE} ({err})")
    if not isinstance(raw, dict):
        return JobOutcome(
            run_dir, False, "unreadable", f"unreadable {RESULTS_FILE} (not an object)"
        )
    status = str(raw.get("status") or "unknown")
    if status == "failed":
        error = str(raw.get("error") or "no error message").strip()
        first = error.splitlines()[0][:300] if error else "no error message"
        code = raw.get("exit_code")
        user = code == 2 if code is not None else first.split(":")[0].strip() in user_errors
        return JobOutcome(run_dir, False, status, first, user_error=user)
    if status in ("complete", "smoke"):  # an older file: a job skipped as already done
        return JobOutcome(run_dir, True, status)
    return JobOutcome(run_dir, False, status, f"{RESULTS_FILE} has status {status!r}")


def summarise_sweep(sweep_dir: str | os.PathLike, since: float = 0.0) -> list[JobOutcome]:
    """Outcomes of the jobs under ``sweep_dir`` that ran at or after ``since`` (epoch seconds)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    names = _user_error_names()
    return [job_outcome(d, names) for d in _job_dirs(sweep_dir, since)]


def exit_status(outcomes: list[JobOutcome]) -> int:
    """0 when every job finished; 2 when all failures were bad input or settings; else 1."""
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return 0
    return 2 if all(o.user_error for o in failed) else 1


def format_summary(outcomes: list[JobOutcome], sweep_dir: Path) -> str:
    failed = [o for o in outcomes if not o.ok]
    lines = [f"galda: {len(failed)} of {len(outcomes)} job(s) of the sweep in {sweep_dir} failed:"]
    for o in failed:
        try:
            name = str(o.run_dir.relative_to(sweep_dir)) or "."
        except ValueError:
            name = str(o.run_dir)
        lines.append(f"  {name}: {o.reason}")
    return "\n".join(lines)


class SweepSummary(Callback):
    """After a multirun, name the failed jobs and exit non-zero (see the module docstring).

    Args:
        exit_on_failure: raise ``SystemExit`` when a job failed (False: only print).
    """

    def __init__(self, exit_on_failure: bool = True) -> None:
        self.exit_on_failure = bool(exit_on_failure)
        self._started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        outcomes = summarise_sweep(sweep_dir, since=self._started - _CLOCK_SLACK_S)
        code = exit_status(outcomes)
        if code == 0:
            return
        print(format_summary(outcomes, sweep_dir), file=sys.stderr, flush=True)
        if self.exit_on_failure:
            # SystemExit passes through Hydra's callback and error handlers (they catch Exception)
            raise SystemExit(code)


class OutputFolderCheck(Callback):
    """Refuse, in one line with exit status 2, a run or sweep folder that cannot be written.

    Hydra creates ``hydra.run.dir`` (or ``hydra.sweep.dir``) and its log file before galda's
    code runs, so a read-only folder or a full disk would otherwise end in Hydra's traceback and
    exit status 1. This probes the folder first (:func:`galda.results.probe_writable`: nothing is
    left behind). Registered in ``conf/hydra/default.yaml``.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "sweep")

    @staticmethod
    def _check(config: DictConfig, mode: str) -> None:
        try:
            folder = Path(str(config.hydra[mode].dir))
        except Exception:  # noqa: BLE001 - an unresolvable path: Hydra reports it itself
            return
        try:
            probe_writable(folder)
        except OSError as err:
            what = "the run folder" if mode == "run" else "the sweep folder"
            print(
                f"galda.run: error: {cannot_write(folder, err, what, RUN_FOLDER_KEYS)}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(2) from None
