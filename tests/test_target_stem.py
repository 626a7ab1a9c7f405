"""The target's own first convolution (``method.module.target_stem``), against plain references: the
source path is the shared network, the target path the same network with its first convolution
replaced, and each domain's loss reaches only its own stem."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from galda.errors import ConfigError
from galda.methods import DANNClassifier, MMDClassifier
from galda.methods.domain_statistics import STEM_PREFIX, batchnorm_layers, first_convolution
from galda.models import TinyNet
from tests.conftest import assert_predictor_matches_module


def _target_reference(module: MMDClassifier) -> nn.Module:
    """The target's network written out: a copy with the target stem as its first convolution and
    batch norms starting from a new layer's statistics (the target's first training forward)."""
    assert module.target_stem is not None
    net = copy.deepcopy(module.net)
    with torch.no_grad():
        first_convolution(net).weight.copy_(module.target_stem[0])
        first_convolution(net).bias.copy_(module.target_stem[1])
    for m in batchnorm_layers(net):
        m.reset_running_stats()
    return net


def test_each_domain_runs_its_own_first_convolution_and_trains_only_its_own():
    torch.manual_seed(0)
    module = MMDClassifier(TinyNet(), domain_batchnorm=True, target_stem=True).train()
    conv = first_convolution(module.net)
    assert module.target_stem is not None
    torch.testing.assert_close(module.target_stem[0], conv.weight)  # both start equal
    with torch.no_grad():
        module.target_stem[0].add_(0.1 * torch.randn_like(conv.weight))  # make them differ
    ref_source, ref_target = copy.deepcopy(module.net), _target_reference(module)
    x_s, x_t = torch.randn(16, 3, 75, 75), torch.randn(12, 3, 75, 75) * 3 + 2
    source, target = module._forward_domains(x_s, x_t)
    torch.testing.assert_close(source.logits, ref_source(x_s)[1])
    torch.testing.assert_close(target.logits, ref_target(x_t)[1])
    target.logits.square().mean().backward()  # a loss on target outputs only
    assert conv.weight.grad is None and module.target_stem[0].grad is not None
    module.zero_grad()
    source, target = module._forward_domains(x_s, x_t)
    source.logits.square().mean().backward()  # and one on source outputs only
    assert module.target_stem[0].grad is None and conv.weight.grad is not None
    assert first_convolution(module.net).weight is conv.weight  # swapped back after the block
    optimizer = module.configure_optimizers()  # no schedule given: the optimiser itself
    assert any(
        g.get("name") == "target_stem" and g["params"] == list(module.target_stem)
        for g in optimizer.param_groups
    )


def test_target_stem_without_per_domain_forwards_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match="domain_batchnorm"):
        DANNClassifier(TinyNet(), target_stem=True)
    from galda.preflight import _stem_problems

    cfg = compose_cfg("method=mmd", "++method.module.target_stem=true")
    (problem,) = _stem_problems(cfg)
    assert "method.module.domain_batchnorm=true" in str(problem)
    assert _stem_problems(compose_cfg("method=dann", "++method.module.target_stem=true")) == []
    (problem,) = _stem_problems(compose_cfg("method=dann", "++method.module.target_stem=2"))
    assert "true or false" in str(problem)


def test_the_target_stem_travels_to_the_predictor(tiny_cfg, tmp_path):
    from galda.train import train

    cfg = tiny_cfg(
        "method=dann",
        "++method.module.target_stem=true",
        "trainer.max_epochs=1",
        run_dir=tmp_path / "run",
    )
    results = train(cfg)
    state = torch.load(results["checkpoint"], weights_only=True)["state_dict"]
    assert f"{STEM_PREFIX}0" in state
    module = DANNClassifier.load_from_checkpoint(results["checkpoint"]).eval()
    assert module.target_stem is not None
    assert not torch.allclose(module.target_stem[0], first_convolution(module.net).weight)
    assert_predictor_matches_module(results["checkpoint"], module)
