"""Every combination of the config groups composes, and every model × method builds."""

import itertools

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.conftest import CONF


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUPS = {g: _options(g) for g in ("data", "model", "method", "optim", "trainer", "logger", "callbacks")}


@pytest.fixture(scope="module")
def composer():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda overrides: compose("train", overrides=overrides)
    GlobalHydra.instance().clear()


def test_every_group_combination_composes(composer):
    names = list(GROUPS)
    count = 0
    for combo in itertools.product(*(GROUPS[n] for n in names)):
        cfg = composer([f"{n}={o}" for n, o in zip(names, combo)])
        resolved = OmegaConf.to_container(cfg.method, resolve=True)  # interpolations resolve
        assert cfg.data.name and cfg.model.name and resolved["name"] == combo[names.index("method")]
        count += 1
    assert count == len(list(itertools.product(*GROUPS.values()))) >= 5 * 3 * 4


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiments_compose(composer, experiment):
    cfg = composer([f"experiment={experiment}"])
    assert cfg.task_name == experiment


@pytest.mark.parametrize("model", GROUPS["model"])
@pytest.mark.parametrize("method", GROUPS["method"])
def test_every_model_and_method_builds(composer, model, method):
    from galda.methods import MergerClassifier
    from galda.train import build_module

    cfg = composer([f"model={model}", f"method={method}"])
    module = build_module(cfg)
    assert isinstance(module, MergerClassifier)
    assert type(module).uses_target_labels == (method == "oracle")
    assert type(module).uses_target_images == (method != "baseline")
