"""Which memory layout the images and convolution weights use: ``data.channels_last``.

``auto`` (the default) is channels-last when training runs on the CPU and NCHW on an accelerator.
On the CPU oneDNN's channels-last convolutions were faster in every measurement (1.04–1.5× per
DeepMerge or ResNet18 step, 1 or 2 threads, and unaffected by ``trainer.deterministic``, which
slows NCHW by up to 1.4×: benchmarks/README.md). On a GPU the layout has not been measured, so
the authors' NCHW stays. Same arithmetic either way; only the order of floating-point sums
differs, so a seeded run is reproducible with either layout but not bit-identical across them.
"""

from __future__ import annotations

from typing import Any

from galda.errors import ConfigError

CHOICES = ("auto", "true", "false")


def _training_on_cpu(accelerator: str) -> bool:
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def channels_last_enabled(setting: Any, accelerator: Any = "auto") -> bool:
    """``data.channels_last`` (``auto`` | ``true`` | ``false``) for ``trainer.accelerator``."""
    text = str(setting).strip().lower()
    if text not in CHOICES:
        raise ConfigError(
            f"data.channels_last={setting}: must be auto, true or false, e.g. data.channels_last=auto"
        )
    if text != "auto":
        return text == "true"
    return _training_on_cpu(str(accelerator or "auto").strip().lower())


def channels_last_for(cfg: Any) -> bool:
    """:func:`channels_last_enabled` for a run's config (``data`` and ``trainer`` nodes)."""
    data = cfg.get("data") or {}
    trainer = cfg.get("trainer") or {}
    return channels_last_enabled(
        data.get("channels_last", "auto"), trainer.get("accelerator", "auto")
    )


__all__ = ["CHOICES", "channels_last_enabled", "channels_last_for"]
