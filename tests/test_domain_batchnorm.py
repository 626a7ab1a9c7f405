"""Per-domain batch-norm statistics (``method.module.domain_batchnorm``), against plain references:
a copy of the network that only ever sees source batches, and one that only sees target batches."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from galda.methods import DANNClassifier, MMDClassifier
from galda.methods.domain_statistics import CHECKPOINT_KEY, batchnorm_layers
from galda.models import TinyNet
from tests.conftest import assert_predictor_matches_module


def _stats(net: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone()) for m in batchnorm_layers(net)]


def _fresh(net: nn.Module) -> nn.Module:
    """A copy whose batch norms start from a new layer's statistics (mean 0, variance 1)."""
    net = copy.deepcopy(net)
    for m in batchnorm_layers(net):
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
    return net


def test_each_domain_is_normalised_by_its_own_batch_and_keeps_its_own_statistics():
    torch.manual_seed(0)
    module = MMDClassifier(TinyNet(), domain_batchnorm=True)
    ref_source, ref_target = copy.deepcopy(module.net), _fresh(module.net)
    module.train(), ref_source.train(), ref_target.train()
    for _ in range(3):
        x_s = torch.randn(16, 3, 75, 75)
        x_t = torch.randn(12, 3, 75, 75) * 3 + 2  # another domain: other moments
        source, target = module._forward_domains(x_s, x_t)
        f_s, logits_s = ref_source(x_s)
        f_t, logits_t = ref_target(x_t)
        torch.testing.assert_close(source.features, f_s)
        torch.testing.assert_close(target.features, f_t)
        torch.testing.assert_close(target.logits, logits_t)
        # the training step's backward pass runs through both forwards (buffers swapped, not overwritten)
        loss = nn.functional.cross_entropy(source.logits, torch.zeros(16, dtype=torch.long))
        loss = loss + module.transfer_loss(source, target)[0]
        loss.backward()
        for (m, v), (rm, rv) in zip(_stats(module.net), _stats(ref_source)):
            torch.testing.assert_close((m, v), (rm, rv))
        for (m, v), (rm, rv) in zip(module.target_stats, _stats(ref_target)):
            torch.testing.assert_close((m, v), (rm, rv))
    assert all(p.grad is not None for p in module.net.parameters())


def test_mixed_batches_stay_the_default_and_share_statistics():
    torch.manual_seed(0)
    module = DANNClassifier(TinyNet())
    assert module.domain_batchnorm is False
    ref = copy.deepcopy(module.net).train()
    module.train()
    x_s, x_t = torch.randn(8, 3, 75, 75), torch.randn(8, 3, 75, 75) + 1
    source, _ = module._forward_domains(x_s, x_t)
    torch.testing.assert_close(source.features, ref(torch.cat([x_s, x_t]))[0][:8])
    assert module.target_stats == []


def test_target_statistics_travel_in_the_checkpoint_and_restore_on_load(monkeypatch):
    from galda.checkpointing import ResumableRun

    # only the statistics' part of the checkpoint: the RNG part needs a trainer
    monkeypatch.setattr(ResumableRun, "on_save_checkpoint", lambda self, checkpoint: None)
    monkeypatch.setattr(ResumableRun, "on_load_checkpoint", lambda self, checkpoint: None)
    torch.manual_seed(0)
    module = MMDClassifier(TinyNet(), domain_batchnorm=True).train()
    module._forward_domains(torch.randn(8, 3, 75, 75), torch.randn(8, 3, 75, 75) * 2)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    restored = MMDClassifier(TinyNet(), domain_batchnorm=True)
    restored.on_load_checkpoint(checkpoint)
    for got, want in zip(restored.target_stats, module.target_stats):
        torch.testing.assert_close(got, want)


def test_target_statistics_move_with_the_module():
    torch.manual_seed(0)
    module = MMDClassifier(TinyNet(), domain_batchnorm=True).train()
    module._forward_domains(torch.randn(8, 3, 75, 75), torch.randn(8, 3, 75, 75) * 2)
    before = [(m.clone(), v.clone()) for m, v in module.target_stats]
    module.to(torch.float64)  # the same path as .to("cuda"): nn.Module._apply
    assert [(m.dtype, v.dtype) for m, v in module.target_stats] == [
        (torch.float64, torch.float64)
    ] * len(before)
    for (m, v), (m0, v0) in zip(module.target_stats, before):
        torch.testing.assert_close((m, v), (m0.double(), v0.double()))
    # and they are still what target evaluation swaps in
    with module.target_statistics():
        for layer, (m, _) in zip(batchnorm_layers(module.net), module.target_stats):
            assert layer.running_mean is m


def _trained_dann(tiny_cfg, run_dir, mode: str) -> dict:
    """One epoch of DANN on the tiny set with ``domain_batchnorm=mode``; its results."""
    from galda.train import train

    cfg = tiny_cfg(
        "method=dann",
        f"method.module.domain_batchnorm={mode}",
        "trainer.max_epochs=1",
        run_dir=run_dir,
    )
    return train(cfg)


def test_trained_run_classifies_each_domain_with_its_own_statistics(tiny_cfg, tmp_path):
    results = _trained_dann(tiny_cfg, tmp_path / "run", "true")
    assert results["config"]["method"]["module"]["domain_batchnorm"] is True
    checkpoint = torch.load(results["checkpoint"], weights_only=True)
    target_stats = checkpoint[CHECKPOINT_KEY]
    module = DANNClassifier.load_from_checkpoint(results["checkpoint"]).eval()
    source_stats = _stats(module.net)
    assert not torch.allclose(target_stats[0][0], source_stats[0][0])
    assert_predictor_matches_module(results["checkpoint"], module)
    # the network's own buffers are the source's: evaluating target images left them untouched
    for (m, v), (rm, rv) in zip(_stats(module.net), source_stats):
        np.testing.assert_array_equal(m.numpy(), rm.numpy())
        np.testing.assert_array_equal(v.numpy(), rv.numpy())


def test_affine_gives_the_target_its_own_scale_and_shift_trained_by_its_own_gradients():
    torch.manual_seed(0)
    module = MMDClassifier(TinyNet(), domain_batchnorm="affine").train()
    layers = batchnorm_layers(module.net)
    assert module.target_affine is not None and len(module.target_affine) == 2 * len(layers)
    source_affine = [(m.weight, m.bias) for m in layers]
    optimiser = torch.optim.SGD(module.parameters(), lr=0.5)
    assert any(p is module.target_affine[0] for p in module.parameters())  # trained with the rest
    # a plain reference: the target's network is the same convolutions with its own γ, β
    ref_target = _fresh(module.net)
    x_s, x_t = torch.randn(16, 3, 75, 75), torch.randn(12, 3, 75, 75) * 3 + 2
    source, target = module._forward_domains(x_s, x_t)
    torch.testing.assert_close(target.logits, ref_target(x_t)[1])
    loss = target.logits.square().mean()  # a loss on target outputs only
    loss.backward()
    assert all(m.weight.grad is None for m in layers)  # the source's γ, β got nothing
    assert all(p.grad is not None for p in module.target_affine)
    optimiser.step()
    assert [(m.weight, m.bias) for m in layers] == source_affine  # swapped back afterwards
    gamma_t = module.target_affine[0]
    assert not torch.allclose(gamma_t, layers[0].weight)
    # evaluation of target images uses the target's γ, β; of source images, the network's own
    module.eval()
    with torch.no_grad(), module.target_statistics():
        assert layers[0].weight is gamma_t
        assert layers[0].running_mean is module.target_stats[0][0]
    assert layers[0].weight is source_affine[0][0]


def test_affine_target_batchnorm_travels_to_the_predictor(tiny_cfg, tmp_path):
    results = _trained_dann(tiny_cfg, tmp_path / "run", "affine")
    checkpoint = torch.load(results["checkpoint"], weights_only=True)
    assert all(len(layer) == 4 for layer in checkpoint[CHECKPOINT_KEY])
    module = DANNClassifier.load_from_checkpoint(results["checkpoint"]).eval()
    assert module.target_affine is not None
    assert not torch.allclose(module.target_affine[0], batchnorm_layers(module.net)[0].weight)
    assert_predictor_matches_module(results["checkpoint"], module)


@pytest.mark.parametrize("bad", ["maybe"])
def test_domain_batchnorm_rejects_a_non_boolean_before_training(tiny_cfg, bad):
    from galda.errors import GaldaError
    from galda.preflight import preflight

    cfg = tiny_cfg("method=mmd", f"method.module.domain_batchnorm={bad}")
    with pytest.raises(GaldaError, match="method.module.domain_batchnorm"):
        preflight(cfg)


@pytest.mark.parametrize("mode", [True, "affine"])
def test_benchmark_reference_loop_matches_the_package_with_domain_batchnorm(
    monkeypatch, tmp_path, mode
):
    """The plain loop `make bench` compares against runs the same per-domain forward."""
    from types import SimpleNamespace

    from tests.conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from bench_common import build_datamodule, compose_config, make_synthetic_data
    from bench_reference import ReferenceLoop

    paths = make_synthetic_data(tmp_path / "data", 64)
    args = SimpleNamespace(batch_size=16, channels_last=False, on_device=False, precision=None)
    cfg = compose_config(
        "tiny",
        "mmd",
        args,
        torch.device("cpu"),
        paths,
        tmp_path / "out",
        extra=[f"method.module.domain_batchnorm={str(mode).lower()}"],
    )
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    loop = ReferenceLoop(cfg, datamodule, total_steps=4, device=torch.device("cpu"))
    module = MMDClassifier(copy.deepcopy(loop.net), domain_batchnorm=mode).train()
    idx_s, idx_t = loop._next_indices()
    x_s, y_s = datamodule.datasets["source"]["train"].images[idx_s], loop.src.labels[idx_s]
    x_t = datamodule.datasets["target"]["train"].images[idx_t]
    want = loop._loss(x_s, y_s, idx_t)
    source, target = module._forward_domains(x_s, x_t)
    got = nn.functional.cross_entropy(source.logits, y_s) + module.transfer_loss(source, target)[0]
    torch.testing.assert_close(got, want)
    buffers = list(loop.target_buffers.values())  # mean, var per layer, in module order
    for i, (mean, var) in enumerate(module.target_stats):
        torch.testing.assert_close((mean, var), (buffers[2 * i], buffers[2 * i + 1]))
    if mode == "affine":  # the target's γ, β get the same gradients in both
        want.backward()
        got.backward()
        assert module.target_affine is not None
        for mine, theirs in zip(module.target_affine, loop.target_affine.values()):
            assert mine.grad is not None and theirs.grad is not None
            torch.testing.assert_close(mine.grad, theirs.grad)
        assert len(loop.optimizer.param_groups[-1]["params"]) == len(module.target_affine)
