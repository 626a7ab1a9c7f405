"""Shared fixtures: tiny data sets, composed configs, CPU-only and offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@pytest.fixture(scope="session")
def sim_data_dir(tmp_path_factory) -> Path:
    """The simulator's `tiny` preset, made once per session, laid out as `data=tiny` expects."""
    from galda.simulate import simulate_domains

    root = tmp_path_factory.mktemp("data")
    simulate_domains(
        preset="tiny", out=root / "simulated" / "tiny-seed1", seed=1, workers=1, progress=False
    )
    return root


def make_domain_files(
    folder: Path,
    n_galaxies: int = 40,
    views: int = 2,
    seed: int = 0,
    noise: float = 0.0,
    labelled_target: bool = True,
) -> tuple[Path, Path]:
    """Synthetic paired domains with `views` images per galaxy (mergers have a second blob)."""
    from galda.data.h5format import write_domain

    rng = np.random.default_rng(seed)
    labels_g = np.arange(n_galaxies) % 2
    ids = np.repeat(np.arange(100, 100 + n_galaxies), views)
    labels = np.repeat(labels_g, views)
    yy, xx = np.mgrid[:75, :75]
    images = np.zeros((len(ids), 3, 75, 75), np.float32)
    for i, y in enumerate(labels):
        images[i] += (
            np.exp(-((xx - 37) ** 2 + (yy - 37) ** 2) / 20.0) * (1 + np.arange(3))[:, None, None]
        )
        if y:
            images[i] += 0.6 * np.exp(-((xx - 48) ** 2 + (yy - 40) ** 2) / 8.0)
    source = write_domain(
        folder / "source.h5", images, labels, ids, attrs={"domain": "source"}, overwrite=True
    )
    noisy = (
        images + rng.normal(0, noise, images.shape).astype(np.float32) if noise else images + 1.0
    )
    target = write_domain(
        folder / "target.h5",
        noisy,
        labels if labelled_target else None,
        ids,
        attrs={"domain": "target"},
        overwrite=True,
    )
    return source, target


@pytest.fixture()
def compose_cfg(tmp_path):
    """Compose the app's config like `python -m galda.run`, with a run folder under tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _compose(*overrides: str, run_dir: Path | None = None):
        GlobalHydra.instance().clear()
        run_dir = run_dir or tmp_path / "run"
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
            cfg.callbacks.progress_bar = None
            cfg.trainer.accelerator = "cpu"
            del cfg.hydra
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture()
def tiny_cfg(compose_cfg, sim_data_dir):
    """``compose_cfg`` on the tiny simulated set with the tiny network and no logger."""

    def _tiny(*overrides: str, run_dir: Path | None = None):
        base = ("data=tiny", f"paths.data_dir={sim_data_dir}", "model=tiny", "logger=none")
        return compose_cfg(*base, *overrides, run_dir=run_dir)

    return _tiny


def assert_predictor_matches_module(checkpoint: str | Path, module) -> None:
    """``galda.load_model`` classifies each domain as the LightningModule does: the target with its
    own statistics (and whatever else the module swaps in for it), the source with the network's."""
    from galda.inference import load_model

    x = torch.rand(6, 3, 75, 75)
    with torch.no_grad():
        with module.target_statistics():
            want_target = module(module.normalise(x, "target")).softmax(1)[:, 1]
        want_source = module(module.normalise(x, "source")).softmax(1)[:, 1]
        got_target = load_model(checkpoint, domain="target", calibrated=False)(x)
        got_source = load_model(checkpoint, domain="source", calibrated=False)(x)
    torch.testing.assert_close(got_target, want_target, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_source, want_source, atol=1e-6, rtol=0)
