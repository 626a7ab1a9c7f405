"""Every combination of the config groups composes, and every model × method builds."""

import itertools

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.conftest import CONF


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUPS = {
    g: _options(g) for g in ("data", "model", "method", "optim", "trainer", "logger", "callbacks")
}


@pytest.fixture(scope="module")
def composer():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda overrides: compose("train", overrides=overrides)
    GlobalHydra.instance().clear()


def _combinations() -> list[dict[str, str]]:
    """Every method with every model and every data set (the groups that interact), and every
    option of the other groups once (the full product grows with every new option)."""
    combos = [
        {"method": me, "model": mo, "data": d}
        for me, mo, d in itertools.product(GROUPS["method"], GROUPS["model"], GROUPS["data"])
    ]
    for group in ("optim", "trainer", "logger", "callbacks"):
        combos += [
            {group: option, "method": GROUPS["method"][i % len(GROUPS["method"])]}
            for i, option in enumerate(GROUPS[group])
        ]
    return combos


def test_every_group_combination_composes(composer):
    combos = _combinations()
    for combo in combos:
        cfg = composer([f"{n}={o}" for n, o in combo.items()])
        resolved = OmegaConf.to_container(cfg.method, resolve=True)  # interpolations resolve
        selection = OmegaConf.to_container(cfg.selection, resolve=True)
        assert cfg.data.name and cfg.model.name and resolved["name"] == combo["method"]
        assert selection["mode"] in ("max", "min")
    covered = {(g, o) for c in combos for g, o in c.items()}
    assert covered == {(g, o) for g, opts in GROUPS.items() for o in opts}


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
    assert type(module).uses_target_labels == method.startswith("oracle")
    assert module.uses_target_images == (method != "baseline")
