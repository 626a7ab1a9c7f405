"""Make a configured data set available before the DataModule is built.

Simulated sets (a ``data.simulate`` node) are rendered on first use and cached; imported sets are
left to the DataModule, which names a missing file and how to get it. This is the app's step, so
``galda.data`` never imports the simulator.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from galda.errors import GaldaError

log = logging.getLogger(__name__)

#: keys of a ``data`` config for the app (how to make the data, what preflight allows), not the
#: DataModule
PROVISION_KEYS = ("simulate", "allow_same_file")


def datamodule_config(data_cfg: DictConfig) -> DictConfig:
    """The ``data`` node without the provisioning keys: what the DataModule is built from."""
    plain = OmegaConf.to_container(data_cfg, resolve=True)
    assert isinstance(plain, dict)
    return OmegaConf.create({k: v for k, v in plain.items() if k not in PROVISION_KEYS})


def ensure_data(data_cfg: DictConfig) -> None:
    """Simulate the source/target files when absent and ``data.simulate`` says how."""
    paths = [Path(data_cfg.source_path), Path(data_cfg.target_path)]
    if all(p.exists() for p in paths) or not data_cfg.get("simulate"):
        return
    simulate: dict[str, Any] = OmegaConf.to_container(data_cfg.simulate, resolve=True)  # type: ignore[assignment]
    out = paths[0].parent
    if paths[1].parent != out:
        raise GaldaError(
            "data.source_path and data.target_path: simulated files must share a folder"
        )
    from filelock import FileLock

    from galda.simulate import simulate_domains

    out.mkdir(parents=True, exist_ok=True)
    # Parallel sweep jobs may all find the data missing: one simulates, the others wait for it.
    with FileLock(str(out / ".simulate.lock")):
        if all(p.exists() for p in paths):
            return
        log.info(
            "Simulating data set '%s' into %s (first use; cached afterwards)",
            data_cfg.get("name"),
            out,
        )
        simulate_domains(out=out, progress=True, **simulate)
