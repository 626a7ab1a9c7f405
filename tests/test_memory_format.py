"""data.channels_last: auto picks channels-last on the CPU and NCHW on an accelerator."""

import pytest
import torch

from galda.errors import ConfigError
from galda.memory_format import channels_last_enabled, channels_last_for


@pytest.mark.parametrize(
    ("setting", "accelerator", "expected"),
    [
        ("auto", "cpu", True),
        ("auto", "gpu", False),
        ("auto", "cuda", False),
        ("auto", "mps", False),
        ("true", "gpu", True),
        (True, "gpu", True),
        (False, "cpu", False),
        ("false", "cpu", False),
    ],
)
def test_setting_and_accelerator_decide_the_layout(setting, accelerator, expected):
    assert channels_last_enabled(setting, accelerator) is expected


def test_auto_accelerator_follows_the_machine():
    assert channels_last_enabled("auto", "auto") is not torch.cuda.is_available()


def test_unknown_setting_names_the_key():
    with pytest.raises(
        ConfigError, match="data.channels_last=sideways: must be auto, true or false"
    ):
        channels_last_enabled("sideways")


def test_default_run_on_the_cpu_is_channels_last(compose_cfg, sim_data_dir):
    from galda.train import build_module

    cfg = compose_cfg("data=tiny", f"paths.data_dir={sim_data_dir}", "trainer=cpu")
    assert cfg.data.channels_last == "auto" and channels_last_for(cfg)
    conv = next(m for m in build_module(cfg).modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = compose_cfg("data=tiny", f"paths.data_dir={sim_data_dir}", "data.channels_last=false")
    conv = next(m for m in build_module(nchw).modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(
        memory_format=torch.channels_last
    )


def test_both_layouts_compute_the_same_step():
    """Same arithmetic, another memory layout: one DeepMerge training step agrees to float
    rounding (plain reference: the NCHW step)."""
    from galda.models import DeepMerge

    x = torch.randn(8, 3, 75, 75)
    y = torch.randint(0, 2, (8,))
    out = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        net = DeepMerge().to(memory_format=layout)
        loss = torch.nn.functional.cross_entropy(net(x.contiguous(memory_format=layout))[1], y)
        loss.backward()
        out[layout] = (loss.detach(), net.features[0].weight.grad.clone())
    torch.testing.assert_close(out[torch.channels_last], out[torch.contiguous_format])


def test_preflight_refuses_an_unknown_layout(compose_cfg, sim_data_dir):
    from galda.preflight import preflight_config

    cfg = compose_cfg("data=tiny", f"paths.data_dir={sim_data_dir}", "data.channels_last=sideways")
    with pytest.raises(
        ConfigError, match="data.channels_last=sideways: must be auto, true or false"
    ):
        preflight_config(cfg)
