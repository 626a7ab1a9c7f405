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


def test_default_optimiser_is_fused_adam(composer):
    """One kernel per step: the same Adam update as PyTorch's default implementation."""
    import torch

    from galda.train import build_module

    module = build_module(composer(["method=dann"]))
    opt = module.optimizer_factory([{"params": list(module.parameters())}])
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"] is True
    # same update as the unfused default, to float rounding (plain reference)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = module.optimizer_factory(params)
    plain = torch.optim.Adam(twins, lr=1e-3, betas=(0.7, 0.8), weight_decay=1e-4)
    for _ in range(3):
        for p, q in zip(params, twins):
            p.grad = torch.full_like(p, 0.5)
            q.grad = torch.full_like(q, 0.5)
        fused.step()
        plain.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q)
