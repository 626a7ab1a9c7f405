"""Peer row: the same DeepMerge training through galda and through skada, epoch for epoch.

skada (scikit-learn-compatible domain adaptation, torch + skorch API) trains the same network
(``galda.models.DeepMerge``, same seed), on the same normalised training tensors, with the same
batch (128 source + 128 target; 128 source only for the baseline), Adam (lr, betas, weight
decay) and per-batch one-cycle schedule from ``conf/optim``. Rows:

* baseline: galda ``method=baseline`` vs skada ``SourceOnly``;
* MMD: galda ``method=mmd`` (5 Gaussian kernels around the pooled median) vs skada ``DAN``
  (its own multi-kernel MMD: 33 kernels around the source median);
* DANN: galda ``method=dann`` vs skada ``DANN`` given galda's discriminator (2,592 → 1,024 →
  1,024 → 1, dropout 0.5) behind a gradient reversal and a sigmoid (skada's loss is BCE on
  probabilities), the discriminator's rate multiplied as in galda's config.

Seconds per epoch: galda from the start of a training epoch to its end, its validation pass over
both domains included; skada from skorch's per-epoch ``dur`` (no validation: ``train_split=None``).
One skada epoch (``partial_fit``) runs right after every galda epoch, inside galda's epoch-end
hook, so each pair of epochs shares the machine's load; ratios are medians over epoch pairs,
the first (warm-up) pair left out when there are two or more. galda runs twice per method (as
configured, and channels-last), each with its own skada fit. Skipped with a note when skada (or
skorch) is not installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import (
    CONF,
    REPO,
    build_datamodule,
    compose_config,
    feed,
    make_synthetic_data,
)
from bench_training import build_trainer
from torch import nn

from galda.memory_format import channels_last_for

NAME = "peers"
METHODS = ("baseline", "mmd", "dann")
SKADA_NAMES = {"baseline": "SourceOnly", "mmd": "DAN", "dann": "DANN"}


def skada_missing() -> str | None:
    """Why skada cannot be used here, or None when it can."""
    try:
        import skada.deep  # noqa: F401 - also needs skorch
    except Exception as err:  # noqa: BLE001 - any import failure means: skip the peer row
        return f"{type(err).__name__}: {err}"
    return None


def _configured_small_set():
    """The data config ``python -m galda.run`` would use (``data=small``), run from the repo."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=small", f"paths.root_dir={REPO}"])
    GlobalHydra.instance().clear()
    return cfg.data


def peer_data(args: argparse.Namespace) -> tuple[tuple[Path, Path], str]:
    """The ``small`` simulated set when its files exist (or --peer-data), else synthetic data."""
    folder = Path(args.peer_data) if args.peer_data else None
    if folder is None and not args.quick:
        folder = Path(_configured_small_set().source_path).parent
    if folder is not None and (folder / "source.h5").exists() and (folder / "target.h5").exists():
        return (folder / "source.h5", folder / "target.h5"), f"files in {folder}"
    n = args.peer_images or (64 if args.quick else 3000)
    paths = make_synthetic_data(args.tmp / "peer-data", n, seed=3)
    return paths, f"synthetic, {n} images per domain (3x75x75)"


def _epoch_timer(after_epoch: Callable[[], None] | None = None):
    import pytorch_lightning as pl

    class EpochTimer(pl.Callback):
        """Wall time of every training epoch (its validation included) and of its validation;
        ``after_epoch`` runs at each epoch's end, outside the timed interval."""

        def __init__(self) -> None:
            self.epochs: list[float] = []
            self.validation: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._val_start = time.perf_counter()

        def on_validation_end(self, trainer, pl_module) -> None:
            self.validation.append(time.perf_counter() - self._val_start)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.epochs.append(time.perf_counter() - self._start)
            if after_epoch is not None:
                after_epoch()

    return EpochTimer()


def _steady(times: list[float]) -> float:
    """Median epoch time, the first (warm-up) epoch left out when there are two or more."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def run_galda(cfg, datamodule, after_epoch: Callable[[], None] | None = None) -> dict[str, Any]:
    """One galda fit of cfg.trainer.max_epochs epochs: per-epoch and total wall times."""
    import pytorch_lightning as pl

    from galda.train import build_module

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = build_module(cfg)
    feed(datamodule, module)
    timer = _epoch_timer(after_epoch)
    trainer = build_trainer(cfg, [timer], max_steps=-1)
    trainer.fit(module, datamodule=datamodule)
    train_only = [e - v for e, v in zip(timer.epochs, timer.validation)]
    return {
        "epoch_s": timer.epochs,
        "validation_s": timer.validation,
        "seconds_per_epoch": _steady(timer.epochs),
        "train_seconds_per_epoch": _steady(train_only) if train_only else None,
        "steps_per_epoch": trainer.num_training_batches,
    }


class _Logits(nn.Module):
    """DeepMerge for skada: returns the logits; skada reads the features by a hook on
    ``net.features`` (the flattened 2,592-d layer galda's losses use)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sample_weight=None) -> torch.Tensor:
        return self.net(x)[1]


class _SkadaDiscriminator(nn.Module):
    """galda's DANN discriminator behind a gradient reversal, returning probabilities."""

    def __init__(self, in_features: int, hidden: int, dropout: float) -> None:
        super().__init__()
        from galda.models.discriminator import DomainDiscriminator

        self.net = DomainDiscriminator(in_features, hidden=hidden, dropout=dropout)

    def forward(self, x: torch.Tensor, sample_weight=None) -> torch.Tensor:
        from galda.losses import grad_reverse

        return torch.sigmoid(self.net(grad_reverse(x, 1.0)))


def _skada_optim(cfg, steps_per_epoch: int, epochs: int, disc_mult: float | None) -> dict:
    """skorch keyword arguments for galda's Adam + per-batch one-cycle schedule."""
    from skorch.callbacks import LRScheduler

    o, s = cfg.optim.optimizer, cfg.optim.scheduler
    lr = float(o.lr)
    max_lr = [lr] if disc_mult is None else [lr * disc_mult, lr]  # param groups first
    kwargs = {
        "optimizer": torch.optim.Adam,
        "lr": lr,
        "optimizer__betas": tuple(float(b) for b in o.betas),
        "optimizer__weight_decay": float(o.weight_decay),
        "callbacks": [
            LRScheduler(
                policy=torch.optim.lr_scheduler.OneCycleLR,
                max_lr=max_lr,
                total_steps=steps_per_epoch * epochs + 1,
                pct_start=float(s.pct_start),
                div_factor=float(s.div_factor),
                final_div_factor=float(s.final_div_factor),
                anneal_strategy=str(s.anneal_strategy),
                cycle_momentum=bool(s.cycle_momentum),
                step_every="batch",
            )
        ],
    }
    if disc_mult is not None:
        kwargs["optimizer__param_groups"] = [("domain_classifier_*", {"lr": lr * disc_mult})]
    return kwargs


def authors_block_order(net: nn.Module) -> nn.Module:
    """DeepMerge's blocks as the authors wrote them (Conv-BN-ReLU-MaxPool) on the same layers.

    galda builds Conv-BN-MaxPool-ReLU, the same function, because it is faster in the
    channels-last layout galda trains in on the CPU; in skada's NCHW it is slower per step
    (benchmarks/README.md), so skada gets the authors' order, as its users would write it.
    """
    layers = list(net.features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    net.features = nn.Sequential(*layers)
    return net


def skada_net(method: str, cfg, steps_per_epoch: int, epochs: int, device: str = "cpu"):
    """The skada estimator of ``method`` around a freshly seeded DeepMerge."""
    from hydra.utils import instantiate
    from skada import deep

    torch.manual_seed(int(cfg.seed))
    net = authors_block_order(instantiate(cfg.model.net))
    m = cfg.method.module
    disc_mult = float(m.discriminator_lr_mult) if method == "dann" else None
    common = {
        "max_epochs": 1,  # one epoch per partial_fit; the schedule spans ``epochs``
        "batch_size": int(cfg.data.batch_size),
        "train_split": None,
        "device": device,
        "verbose": 0,
        **_skada_optim(cfg, steps_per_epoch, epochs, disc_mult),
    }
    module = _Logits(net)
    if method == "baseline":
        return deep.SourceOnly(module, layer_name="net.features", **common)
    if method == "mmd":
        return deep.DAN(module, layer_name="net.features", reg=1.0, **common)
    disc = _SkadaDiscriminator(
        net.feature_dim, int(m.discriminator_hidden), float(m.discriminator_dropout)
    )
    return deep.DANN(module, layer_name="net.features", reg=1.0, domain_classifier=disc, **common)


def skada_inputs(datamodule) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """galda's normalised training tensors in skada's form: source domain 1, target −2
    (unlabelled: y = −1)."""
    src, tgt = datamodule.datasets["source"]["train"], datamodule.datasets["target"]["train"]
    # contiguous NCHW, as skada's users hand it numpy arrays (galda's may be channels-last)
    x = torch.cat([src.images, tgt.images]).cpu().contiguous().numpy()
    domain = np.concatenate([np.ones(len(src), np.int64), np.full(len(tgt), -2, np.int64)])
    y = np.concatenate([src.labels.cpu().numpy(), np.full(len(tgt), -1, np.int64)])
    return {"X": x, "sample_domain": domain}, y


#: galda configurations run against skada: as configured by default (``data.channels_last=auto``:
#: channels-last on the CPU), and the authors' NCHW layout (same arithmetic, another memory layout).
GALDA_VARIANTS = {"galda": [], "galda_nchw": ["data.channels_last=false"]}


def run_pair(args, method: str, cfg, datamodule, skada_data) -> tuple[dict, dict]:
    """A galda fit with one skada epoch (``partial_fit``) after each galda epoch, inside galda's
    epoch-end hook: each galda epoch has a skada epoch next to it in time, under the same
    global torch flags and threads, so machine load hits both alike."""
    steps = len(datamodule.datasets["source"]["train"]) // datamodule.batch_size
    net = skada_net(method, cfg, steps, args.peer_epochs, args.device.type)
    x, y = skada_data
    durations: list[float] = []

    def skada_epoch() -> None:
        net.partial_fit(x, y)
        durations.append(float(net.history[-1, "dur"]))

    galda = run_galda(cfg, datamodule, after_epoch=skada_epoch)
    return galda, {"epoch_s": durations, "seconds_per_epoch": _steady(durations)}


def _pair_ratio(galda: list[float], skada: list[float]) -> float:
    """Median over epoch pairs (the first left out when there are two or more) of galda/skada."""
    ratios = [g / s for g, s in zip(galda, skada)]
    return statistics.median(ratios[1:] if len(ratios) > 1 else ratios)


def _row(args, cfgs, datamodules, method: str) -> dict[str, Any]:
    """Both galda variants, each paired epoch by epoch with a skada fit of the same method."""
    skada_data = skada_inputs(datamodules["galda"])
    row: dict[str, Any] = {
        "method": method,
        "skada_method": SKADA_NAMES[method],
        "galda_layout": "channels_last" if channels_last_for(cfgs["galda"][method]) else "nchw",
    }
    for name in GALDA_VARIANTS:
        galda, skada = run_pair(args, method, cfgs[name][method], datamodules[name], skada_data)
        row[name] = galda
        row["skada" if name == "galda" else f"skada_with_{name}"] = skada
        row[f"{name}_over_skada"] = _pair_ratio(galda["epoch_s"], skada["epoch_s"])
        train = [e - v for e, v in zip(galda["epoch_s"], galda["validation_s"])]
        if len(train) == len(galda["epoch_s"]):
            row[f"{name}_train_only_over_skada"] = _pair_ratio(train, skada["epoch_s"])
    args.console.print(
        f"  {method:8s} skada ({SKADA_NAMES[method]}) {row['skada']['seconds_per_epoch']:6.2f} "
        f"s/epoch; galda {row['galda']['seconds_per_epoch']:6.2f} s/epoch "
        f"({row['galda_over_skada']:.3f}x, {row['galda_layout']}); galda NCHW "
        f"{row['galda_nchw']['seconds_per_epoch']:6.2f} s/epoch "
        f"({row['galda_nchw_over_skada']:.3f}x)"
    )
    return row


def _per_image_costs(rows: list[dict[str, Any]], batch: int) -> dict[str, float]:
    """galda seconds per forwarded training image: batch per step, x2 with target images."""
    out = {}
    for row in rows:
        images = row["galda"]["steps_per_epoch"] * batch * (1 if row["method"] == "baseline" else 2)
        out[row["method"]] = row["galda"]["seconds_per_epoch"] / images
    return out


def _acceptance(rows: list[dict[str, Any]], per_image: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "galda_over_skada_max": round(max(r["galda_over_skada"] for r in rows), 3),
        "galda_le_0.8x_skada": all(r["galda_over_skada"] <= 0.8 for r in rows),
    }
    for key in ("galda_train_only", "galda_nchw", "galda_nchw_train_only"):
        values = [r[f"{key}_over_skada"] for r in rows if f"{key}_over_skada" in r]
        if values:
            out[f"{key}_over_skada_max"] = round(max(values), 3)
    if "mmd" in per_image and "baseline" in per_image:
        ratio = per_image["mmd"] / per_image["baseline"]
        out["mmd_over_baseline_per_image"] = round(ratio, 3)
        out["mmd_per_image_within_25pct"] = ratio <= 1.25
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    missing = skada_missing()
    if missing:
        note = f"skada not available ({missing}); pip install -e '.[bench]' for the peer row"
        args.console.print(f"peers: skipped: {note}")
        return {"peers": {"status": "skipped", "reason": note}}

    paths, label = peer_data(args)
    batch = 16 if args.quick else 128
    extra = [f"trainer.max_epochs={args.peer_epochs}", f"data.batch_size={batch}"]
    cfgs = {
        name: {
            m: compose_config("deepmerge", m, args, args.device, paths, args.tmp, extra + more)
            for m in args.peer_methods
        }
        for name, more in GALDA_VARIANTS.items()
    }
    datamodules = {}
    for name, by_method in cfgs.items():
        datamodules[name] = build_datamodule(by_method[args.peer_methods[0]])
        datamodules[name].setup("fit")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.peer_threads or threads)
    args.console.print(
        f"peers: galda vs skada, DeepMerge, {label}, {args.peer_epochs} epochs, "
        f"{torch.get_num_threads()} torch thread(s)"
    )
    try:
        rows = [_row(args, cfgs, datamodules, m) for m in args.peer_methods]
    finally:
        torch.set_num_threads(threads)
    per_image = _per_image_costs(rows, batch)
    peers = {
        "status": "ok",
        "data": label,
        "split_sizes": datamodules["galda"].split_sizes,
        "epochs": args.peer_epochs,
        "threads": args.peer_threads or threads,
        "batch_per_domain": batch,
        "timing": "seconds per epoch: median over epochs after the first; galda incl. its "
        "validation pass, skada skorch 'dur' (train_split=None); one skada epoch runs after "
        "every galda epoch (paired); ratios: median over epoch pairs after the first",
        "rows": rows,
        "galda_seconds_per_image": per_image,
    }
    return {"peers": peers, "acceptance": _acceptance(rows, per_image)}


def skipped(args: argparse.Namespace) -> dict[str, Any]:
    return {"peers": {"status": "skipped", "reason": "not selected (--only / --skip)"}}


def check(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    args.peer_methods = [m.strip() for m in args.peer_methods.split(",") if m.strip()]
    for name in args.peer_methods:
        if name not in METHODS:
            p.error(f"unknown peer method {name!r}; options: {', '.join(METHODS)}")
    args.peer_epochs = args.peer_epochs or (1 if args.quick else 2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peer-methods", default=",".join(METHODS), help="peer rows (%(default)s)")
    p.add_argument("--peer-epochs", type=int, default=None, help="epochs per fit (2; quick 1)")
    p.add_argument(
        "--peer-threads",
        type=int,
        default=1,
        help="torch threads for the peer fits (default 1: one job per core, as in issue 16; "
        "0 keeps the process's)",
    )
    p.add_argument("--peer-data", default=None, help="folder with source.h5 + target.h5")
    p.add_argument(
        "--peer-images", type=int, default=None, help="synthetic images per domain (3000; quick 64)"
    )
