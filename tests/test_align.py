"""method.module.align=target: the source features enter the transfer loss as a fixed anchor."""

import copy

import pytest
import torch
import torch.nn.functional as F

from galda.errors import ConfigError
from galda.losses import MMDLoss
from galda.methods import DANNClassifier, MMDClassifier
from galda.models import TinyNet


def _step_grads(module, x_s, y_s, x_t) -> dict[str, torch.Tensor]:
    module.train()
    module.zero_grad()
    module.log_training = lambda *a, **k: None  # no trainer here: the loss is what is tested
    loss = module.training_step({"source": (x_s, y_s), "target": x_t}, 0)
    loss.backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("domain_batchnorm", [False, True])
def test_mmd_with_align_target_matches_a_plain_stop_gradient_loss(domain_batchnorm):
    torch.manual_seed(0)
    x_s, x_t = torch.randn(8, 3, 75, 75), torch.randn(8, 3, 75, 75) * 2 + 1
    y_s = torch.randint(0, 2, (8,))
    module = MMDClassifier(TinyNet(), align="target", domain_batchnorm=domain_batchnorm)
    net = copy.deepcopy(module.net).train()
    got = _step_grads(module, x_s, y_s, x_t)

    # the plain reference: the same forward, the source features detached in the MMD term only
    if domain_batchnorm:  # in training mode each batch is normalised by its own statistics
        f_s, logits_s = net(x_s)
        f_t = net(x_t)[0]
    else:
        f, logits = net(torch.cat([x_s, x_t]))
        f_s, f_t, logits_s = f[:8], f[8:], logits[:8]
    loss = F.cross_entropy(logits_s, y_s) + MMDLoss()(f_s.detach(), f_t)
    loss.backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(got[f"net.{name}"], p.grad, rtol=1e-4, atol=1e-6)

    # and it is not the default: with align=both the source features move too
    torch.manual_seed(0)
    both = MMDClassifier(TinyNet(), domain_batchnorm=domain_batchnorm)
    grads_both = _step_grads(both, x_s, y_s, x_t)
    assert any(not torch.allclose(got[n], grads_both[n]) for n in got)


def test_dann_with_align_target_still_trains_the_discriminator_on_both_domains():
    torch.manual_seed(0)
    x_s, x_t = torch.randn(8, 3, 75, 75), torch.randn(8, 3, 75, 75) * 2 + 1
    y_s = torch.randint(0, 2, (8,))
    target_only = DANNClassifier(
        TinyNet(), align="target", discriminator_dropout=0.0, schedule="constant"
    )  # constant: the ramp is 0 at step 0
    both = copy.deepcopy(target_only)
    both.align = "both"
    g_target, g_both = (_step_grads(m, x_s, y_s, x_t) for m in (target_only, both))
    disc = [n for n in g_target if n.startswith("discriminator.")]
    assert disc  # the discriminator learns from source and target features alike
    for n in disc:
        torch.testing.assert_close(g_target[n], g_both[n])
    net = [n for n in g_target if n.startswith("net.")]
    assert any(not torch.allclose(g_target[n], g_both[n]) for n in net)


def test_align_rejects_an_unknown_mode():
    with pytest.raises(ConfigError, match="method.module.align=source"):
        MMDClassifier(TinyNet(), align="source")


def test_preflight_refuses_an_unknown_mode_before_any_work(compose_cfg, sim_data_dir):
    from galda.preflight import preflight_config

    cfg = compose_cfg(
        "data=tiny", f"paths.data_dir={sim_data_dir}", "method=dann", "method.module.align=source"
    )
    with pytest.raises(
        ConfigError, match="method.module.align=source: must be one of both, target"
    ):
        preflight_config(cfg)
