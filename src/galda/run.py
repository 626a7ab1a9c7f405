"""The Hydra app: ``python -m galda.run [overrides] [-m]``.

Examples::

    python -m galda.run                                   # baseline DeepMerge on the small simulated set
    python -m galda.run method=dann model=resnet18 seed=1,2,3 -m
    python -m galda.run experiment=table1                 # the paper's grid (a sweep in config)
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from galda.errors import GaldaError

log = logging.getLogger("galda")


def find_config_dir() -> Path:
    """``$GALDA_CONFIG_DIR``, else the repository's ``conf/``, else the copy inside the wheel."""
    env = os.environ.get("GALDA_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here.parents[1] / "conf", here / "conf"]
    for candidate in candidates:
        if (candidate / "train.yaml").exists():
            return candidate
    raise FileNotFoundError(f"galda config folder not found (looked in {candidates})")


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=str(find_config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train one job; return the selection monitor's best value (for Hydra sweepers)."""
    from galda.train import train

    try:
        try:
            results = train(cfg)
        except OSError as err:
            problem = _write_problem(err, Path(cfg.paths.output_dir))
            if problem is None:
                raise
            raise problem from err
    except GaldaError as err:
        _record_failure(cfg, err)
        log.error("%s", err)
        if _is_multirun():
            return None
        sys.exit(2)
    except Exception as err:  # a failing job must not stop or lose the others of a sweep
        _record_failure(cfg, err)
        if not _is_multirun():
            raise
        log.exception("job failed: %s (recorded in results.json; the sweep goes on)", err)
        return None
    _print_summary(results, cfg)
    return results["selection"]["best_score"]


def _write_problem(err: OSError, run_dir: Path) -> GaldaError | None:
    """A failed write of the run's outputs (results, predictions, checkpoints, logs) as one line
    naming the run folder; None for any other OSError (a bug, or a data file: reported as is).

    A full disk or read-only mount can only be a write; a permission error counts when it names
    a path inside the run folder (one on a data file is a read problem).
    """
    from galda.errors import RUN_FOLDER_KEYS, cannot_write
    from galda.results import WRITE_ERRNOS

    if err.errno not in WRITE_ERRNOS:
        return None
    if err.errno in (errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST) and err.filename:
        path = Path(os.fsdecode(err.filename)).absolute()
        if not path.is_relative_to(run_dir.absolute()):
            return None
    return cannot_write(run_dir, err, "the run's outputs", RUN_FOLDER_KEYS)


def _record_failure(cfg: DictConfig, err: BaseException) -> None:
    """``results.json`` with status failed, unless the run folder itself cannot take it."""
    from galda.train import write_failure

    try:
        write_failure(cfg, err)
    except OSError as write_err:
        log.debug("could not record the failure in results.json: %s", write_err)


def _print_summary(results: dict, cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{results['data']} · {results['model']} · {results['method']} · seed {results['seed']}"
    )
    table.add_column("domain")
    for metric in ("acc", "auroc", "f1"):
        table.add_column(f"test {metric}", justify="right")
    for domain in ("source", "target"):
        values = [results.get(f"test/{domain}/{m}") for m in ("acc", "auroc", "f1")]
        if all(v is None for v in values):
            continue
        table.add_row(domain, *("—" if v is None else f"{v:.3f}" for v in values))
    console = Console()
    console.print(table)
    console.print(f"results: {Path(cfg.paths.output_dir) / 'results.json'}")
    if results.get("checkpoint"):
        console.print(f"checkpoint: {results['checkpoint']}")


if __name__ == "__main__":
    main()
