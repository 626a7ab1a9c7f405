"""The one results schema: every run writes ``results.json`` (and ``predictions.npz``) in its
run folder; ``galda.report`` reads them back. Writes are atomic (temporary name, then rename).

Keys: ``schema_version``, ``status`` ("complete" | "failed"), ``error``, ``data``, ``model``,
``method``, ``seed``, ``uses_target_labels``, ``selection`` ({monitor, mode}), ``epochs_run``,
``best_epoch``, ``wall_time_s``, ``device``, ``git_commit``, ``versions``, ``run_dir``,
``checkpoint``, ``overrides``, flat metric keys ``test/{domain}/{metric}`` and
``val/source/acc`` (the selection score), ``confusion`` ({domain: [[tn, fp], [fn, tp]]}),
``predictions`` (file name).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.npz"
METRICS = ("acc", "precision", "recall", "f1", "brier", "auroc")
IDENTITY_KEYS = ("data", "model", "method", "seed")


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: errno values that mean "this output cannot be written here" (not a bug in galda)
WRITE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "ENOTDIR", "EEXIST", "EFBIG")
    if hasattr(errno, name)
)


def probe_writable(folder: str | os.PathLike, nbytes: int = 4096) -> None:
    """Raise the OSError a write into ``folder`` would meet (permission, read-only, disk full).

    Creates the missing folder levels, writes and syncs ``nbytes`` to a temporary file there,
    then removes the file and the levels it created: nothing is left behind either way.
    """
    folder = Path(folder)
    missing = []
    level = folder
    while not level.exists() and level != level.parent:
        missing.append(level)
        level = level.parent
    created: list[Path] = []
    try:
        for level in reversed(missing):
            level.mkdir()
            created.append(level)
        fd, tmp = tempfile.mkstemp(prefix=".galda-write-probe.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"\0" * nbytes)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            os.unlink(tmp)
    finally:
        for level in reversed(created):
            try:
                level.rmdir()
            except OSError:
                break


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text output (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically; the format follows the suffix."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip("."), **kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become null so the file stays standard JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic) or (hasattr(value, "item") and callable(value.item)):
        value = value.item()  # numpy and torch scalars
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_results(run_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write ``results.json`` atomically; fills in ``schema_version``."""
    payload = {"schema_version": SCHEMA_VERSION, **results}
    text = json.dumps(_jsonable(payload), indent=2, sort_keys=False) + "\n"
    return atomic_write_bytes(Path(run_dir) / RESULTS_FILE, text.encode())


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read one ``results.json`` (a file or a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def is_complete(run_dir: str | os.PathLike) -> bool:
    """True when the run folder holds a complete results file (used to skip finished jobs)."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return False
    try:
        res = read_results(path)
    except (OSError, json.JSONDecodeError):
        return False
    return res.get("status") in ("complete", "smoke") and "test/source/acc" in res


def write_predictions(run_dir: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Save test-set probabilities and labels (``{domain}_probs``, ``{domain}_labels``)."""
    import io

    buf = io.BytesIO()
    # numpy's stub maps **kwds onto allow_pickle: bool; the keys here are array names
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return atomic_write_bytes(Path(run_dir) / PREDICTIONS_FILE, buf.getvalue())


def git_commit() -> str | None:
    """The commit of the galda source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    names = (
        "galda",
        "torch",
        "torchvision",
        "pytorch-lightning",
        "hydra-core",
        "torchmetrics",
        "numpy",
        "h5py",
        "galsim",
    )
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
