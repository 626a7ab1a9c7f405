"""The Lightning modules: the shared loop, DANN's discriminator training, MMD wiring."""

import functools

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from galda.losses import ganin_coefficient
from galda.methods import BaselineClassifier, DANNClassifier, MMDClassifier
from galda.methods.base import StepOutputs
from galda.models import TinyNet


class _Paired(torch.utils.data.Dataset):
    """Source (x, y) and a clearly shifted, unlabelled target x."""

    def __init__(self, n=64, shift=3.0):
        g = torch.Generator().manual_seed(0)
        self.xs = torch.randn(n, 3, 75, 75, generator=g)
        self.ys = torch.randint(0, 2, (n,), generator=g)
        self.xt = torch.randn(n, 3, 75, 75, generator=g) * 2 + shift

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return {"source": (self.xs[i], self.ys[i]), "target": self.xt[i]}


def _fit(module, steps, lr=1e-3):
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, DataLoader(_Paired(), batch_size=16, shuffle=True))
    return trainer


def _opt(lr=1e-3):
    return functools.partial(torch.optim.Adam, lr=lr)


def test_one_dann_step_updates_every_discriminator_parameter():
    pl.seed_everything(0)
    module = DANNClassifier(TinyNet(), optimizer=_opt(), schedule="constant")
    before = [p.detach().clone() for p in module.discriminator.parameters()]
    _fit(module, steps=1)
    after = list(module.discriminator.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after)), (
        "discriminator was not trained"
    )


def test_dann_optimizer_holds_the_discriminator_at_its_own_rate():
    module = DANNClassifier(TinyNet(), optimizer=_opt(1e-3), discriminator_lr_mult=0.1)
    module.trainer = None
    opt = module.configure_optimizers()
    groups = {g["name"]: g for g in opt.param_groups}
    disc = {id(p) for p in module.discriminator.parameters()}
    assert disc == {id(p) for p in groups["discriminator"]["params"]}
    assert (
        abs(groups["discriminator"]["lr"] - 1e-4) < 1e-12
        and abs(groups["net"]["lr"] - 1e-3) < 1e-12
    )


def test_discriminator_learns_clearly_shifted_domains():
    pl.seed_everything(0)
    module = DANNClassifier(
        TinyNet(), optimizer=_opt(1e-2), schedule="constant", max_coefficient=0.0
    )
    _fit(module, steps=30)
    x = _Paired(n=64)
    module.eval()
    with torch.no_grad():
        d_s = module.discriminator(module.net(x.xs)[0])
        d_t = module.discriminator(module.net(x.xt)[0])
    acc = 0.5 * ((d_s > 0).float().mean() + (d_t <= 0).float().mean())
    assert acc > 0.8


def test_reversal_coefficient_follows_training_progress():
    module = DANNClassifier(TinyNet(), optimizer=_opt(), schedule="ganin", gamma=10.0)
    trainer = _fit(module, steps=8)
    progress = module.global_step / trainer.estimated_stepping_batches
    assert module.global_step == 8
    assert abs(module.coefficient - ganin_coefficient(progress, 10.0)) < 1e-9


def test_mmd_module_adds_a_positive_transfer_loss_on_shifted_data():
    module = MMDClassifier(TinyNet(), optimizer=_opt(), bandwidths="median")
    data = _Paired(n=32)
    loss, _ = module.transfer_loss(
        StepOutputs(*module.net(data.xs)), StepOutputs(*module.net(data.xt))
    )
    assert loss.item() > 0 and loss.requires_grad


def test_baseline_never_forwards_target_images():
    module = BaselineClassifier(TinyNet(), optimizer=_opt())
    calls = []
    module.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    _fit(module, steps=2)
    assert calls == [16, 16]


def test_entropy_term_makes_the_baseline_use_target_images():
    module = BaselineClassifier(TinyNet(), optimizer=_opt(), entropy_weight=0.05)
    calls = []
    module.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    _fit(module, steps=1)
    assert calls == [32]
