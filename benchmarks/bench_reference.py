"""The plain PyTorch loop the package is measured against (``ReferenceLoop``)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from galda.memory_format import channels_last_for


class ReferenceLoop:
    """The same network, data, loss, optimiser and schedule as a hand-written PyTorch loop.

    Built from the same composed config: the network from ``cfg.model.net`` (same seed, so the
    same initial weights), the losses from ``galda.losses`` and the discriminator from
    ``galda.models.discriminator``, Adam + OneCycleLR from ``cfg.optim`` with the same parameter
    groups and learning-rate multipliers. Batches are drawn from the DataModule's own training
    tensors by one ``randperm`` slice per domain. :meth:`step` does one training step.
    """

    def __init__(self, cfg, datamodule, total_steps: int, device: torch.device) -> None:
        from hydra.utils import instantiate

        self.method = str(cfg.method.name)
        self.mcfg = cfg.method.module
        if float(self.mcfg.get("fisher_weight", 0)) or float(self.mcfg.get("entropy_weight", 0)):
            raise SystemExit("the reference loop covers fisher_weight = entropy_weight = 0 only")
        torch.manual_seed(int(cfg.seed))
        np.random.seed(int(cfg.seed))
        net = instantiate(cfg.model.net)
        groups = list(net.parameter_groups()) + self._method_parts(net, device)
        self.uses_target = self.method != "baseline"
        self.weight = float(self.mcfg.get("transfer_weight", 1.0))
        memfmt = torch.channels_last if channels_last_for(cfg) else torch.contiguous_format
        self.net = net.to(device, memory_format=memfmt).train()
        # domain_batchnorm: the target's own running statistics, handed to the net per call
        self.target_buffers = (
            {
                name: torch.zeros_like(b) if name.endswith("mean") else torch.ones_like(b)
                for name, b in self.net.named_buffers()
                if name.endswith(("running_mean", "running_var"))
            }
            if self.mcfg.get("domain_batchnorm")
            else None
        )
        # domain_batchnorm=affine: the target's own γ, β too, trained in their own group
        self.target_affine = (
            {
                f"{name}.{p}": getattr(m, p).detach().clone().requires_grad_()
                for name, m in self.net.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)
                for p in ("weight", "bias")
            }
            if self.mcfg.get("domain_batchnorm") == "affine"
            else {}
        )
        if self.target_affine:
            groups.append({"params": list(self.target_affine.values()), "lr_mult": 1.0})
        self._optimiser(cfg, groups, total_steps)
        self._precision(cfg, device)
        self.device = device
        self.src = datamodule.datasets["source"]["train"]
        self.tgt = datamodule.datasets["target"]["train"]
        self.bs = datamodule.batch_size
        self.n_batches = min(len(self.src), len(self.tgt)) // self.bs  # drop_last, as the package
        self.pin = device.type == "cuda" and self.src.images.device.type == "cpu"
        self.images_per_step = self.bs * (2 if self.uses_target else 1)
        self.step_count = 0
        self._batch = self.n_batches  # start a new epoch on the first step

    def _method_parts(self, net, device: torch.device) -> list[dict]:
        """The MMD loss or the DANN discriminator (with its parameter group) of the method."""
        from galda.losses import MMDLoss
        from galda.models.discriminator import DomainDiscriminator

        m = self.mcfg
        self.discriminator = self.mmd = None
        if self.method == "dann":
            self.discriminator = DomainDiscriminator(
                net.feature_dim,
                hidden=int(m.discriminator_hidden),
                dropout=float(m.discriminator_dropout),
            )
            self.discriminator = self.discriminator.to(device).train()
            params = list(self.discriminator.parameters())
            return [{"params": params, "lr_mult": float(m.discriminator_lr_mult)}]
        if self.method == "mmd":
            self.mmd = MMDLoss(
                bandwidths=m.bandwidths,
                unbiased=bool(m.unbiased),
                n_kernels=int(m.n_kernels),
                multiplier=float(m.multiplier),
            )
        elif self.method != "baseline":
            raise SystemExit(f"no reference loop for method {self.method!r}")
        return []

    def _optimiser(self, cfg, groups: list[dict], total_steps: int) -> None:
        from hydra.utils import instantiate

        base_lr = float(cfg.optim.optimizer.lr)
        param_groups = [
            {"params": g["params"], "lr": base_lr * float(g.get("lr_mult", 1.0))} for g in groups
        ]
        self.optimizer = instantiate(cfg.optim.optimizer)(params=param_groups)
        self.total = total_steps
        self.scheduler = instantiate(cfg.optim.scheduler)(
            optimizer=self.optimizer,
            max_lr=[g["lr"] for g in param_groups],
            total_steps=total_steps + 1,  # +1 as the package does
        )

    def _precision(self, cfg, device: torch.device) -> None:
        precision = str(cfg.trainer.get("precision", "32-true"))
        amp = device.type == "cuda" and precision.startswith("16")
        self.scaler = torch.amp.GradScaler("cuda") if amp else None
        self.autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else contextlib.nullcontext
        )

    def _fetch(self, tensor: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        x = tensor[idx.to(tensor.device)]
        if self.pin:
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    def _next_indices(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        bs = self.bs
        if self._batch >= self.n_batches:
            self._perm_s = torch.randperm(len(self.src))
            self._perm_t = torch.randperm(len(self.tgt)) if self.uses_target else None
            self._batch = 0
        b = self._batch
        self._batch += 1
        idx_t = self._perm_t[b * bs : (b + 1) * bs] if self._perm_t is not None else None
        return self._perm_s[b * bs : (b + 1) * bs], idx_t

    def _loss(self, x_s: torch.Tensor, y_s: torch.Tensor, idx_t) -> torch.Tensor:
        from galda.losses import domain_adversarial_loss, grad_reverse, reversal_coefficient

        bs = self.bs
        if not self.uses_target:
            return F.cross_entropy(self.net(x_s)[1], y_s)
        x_t = self._fetch(self.tgt.images, idx_t)
        if self.target_buffers is None:
            features, logits = self.net(torch.cat([x_s, x_t]))
            f_s, f_t = features[:bs], features[bs:]
        else:  # one forward per domain; batch norm updates the target buffers in place
            f_s, logits = self.net(x_s)
            f_t = torch.func.functional_call(
                self.net, {**self.target_buffers, **self.target_affine}, (x_t,)
            )[0]
        loss = F.cross_entropy(logits[:bs], y_s)
        if self.mmd is not None:
            return loss + self.weight * self.mmd(f_s, f_t)
        m = self.mcfg
        coefficient = reversal_coefficient(
            str(m.schedule), self.step_count / self.total, float(m.gamma), float(m.max_coefficient)
        )
        d = self.discriminator(grad_reverse(torch.cat([f_s, f_t]), coefficient))
        return loss + self.weight * domain_adversarial_loss(d[:bs], d[bs:])[0]

    def step(self) -> None:
        """One training step: batch fetch, forward, loss, backward, optimiser, scheduler."""
        idx_s, idx_t = self._next_indices()
        x_s, y_s = self._fetch(self.src.images, idx_s), self._fetch(self.src.labels, idx_s)
        with torch.enable_grad(), self.autocast():
            loss = self._loss(x_s, y_s, idx_t)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            if self.scaler is not None:  # backward outside autocast, as Lightning does
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1

    @property
    def starts_epoch(self) -> bool:
        """Whether the next :meth:`step` draws a new permutation (its time is not counted)."""
        return self._batch >= self.n_batches
