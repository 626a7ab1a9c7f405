"""Checks of the composed config against the data on disk, run before any training.

:func:`preflight_config` needs no data (value ranges, split fractions, the monitor key);
:func:`preflight` adds the checks against the two domain files: their roles, labels, image shape
against the model, and split sizes. The files are read without their images, so a run that
cannot work is refused in about a second, before anything is loaded, trained or written.

Every problem is one line naming the config key or the file and the fix; all problems found are
raised together as one :class:`~galda.errors.ConfigError` or :class:`~galda.errors.DataError`
(command lines exit with status 2). Doubtful but legal settings are logged as warnings.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from galda.errors import RUN_FOLDER_KEYS, ConfigError, DataError, GaldaError, cannot_write
from galda.memory_format import channels_last_enabled
from galda.results import probe_writable

log = logging.getLogger("galda")

DOMAINS = ("source", "target")
SPLITS = ("train", "val", "test")
VAL_METRICS = ("acc", "loss")
#: metrics for which a larger value is better / worse (selection.mode must agree)
_MODE_OF = {"acc": "max", "loss": "min"}


# ------------------------------------------------------------------------------------ helpers


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg.a.b`` or ``default`` (no interpolation error for an absent key)."""
    if isinstance(cfg, DictConfig):
        value = OmegaConf.select(cfg, dotted, default=default)
        return value
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _integer(value: Any) -> int | None:
    num = _number(value)
    if num is None or num != int(num):
        return None
    return int(num)


def _raise(problems: list[GaldaError]) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise problems[0]
    err = type(problems[0])("\n".join(str(p) for p in problems))
    err.problems = problems  # type: ignore[attr-defined]
    raise err


def smoke_reasons(trainer_cfg: Mapping[str, Any] | None) -> list[str]:
    """The trainer settings that make a run a smoke test rather than a full run.

    ``fast_dev_run``, any ``limit_{train,val,test}_batches`` below a whole epoch, or a
    ``max_steps`` limit. Such runs are written as ``status: smoke`` and left out of tables.
    """
    reasons: list[str] = []
    if not trainer_cfg:
        return reasons
    fdr = trainer_cfg.get("fast_dev_run", False)
    if fdr is True or (not isinstance(fdr, bool) and (_integer(fdr) or 0) > 0):
        reasons.append(f"trainer.fast_dev_run={fdr}")
    for stage in ("train", "val", "test"):
        key = f"limit_{stage}_batches"
        value = trainer_cfg.get(key)
        if value is None:
            continue
        num = _number(value)
        # an int is a batch count (always a limit); a float is a fraction of the epoch
        if isinstance(value, int) and not isinstance(value, bool) or (num is not None and num < 1):
            reasons.append(f"trainer.{key}={value}")
    steps = _integer(trainer_cfg.get("max_steps"))
    if steps is not None and steps >= 0:
        reasons.append(f"trainer.max_steps={steps}")
    return reasons


# ------------------------------------------------------------------------------- the monitor


def validator_names() -> set[str] | None:
    """Names in ``galda.validators.VALIDATORS``; None when that registry is not available."""
    try:
        from galda.validators import VALIDATORS  # type: ignore[attr-defined]
    except ImportError:
        return None
    return {str(name) for name in VALIDATORS}


def loggable_monitors(target_labelled: bool | None = True) -> list[str]:
    """The validation keys a run logs (``target_labelled=False`` drops ``val/target/*``)."""
    keys = [f"val/source/{m}" for m in VAL_METRICS]
    if target_labelled is not False:
        keys += [f"val/target/{m}" for m in VAL_METRICS]
    names = validator_names()
    keys += (
        [f"val/validator/{n}" for n in sorted(names)]
        if names is not None
        else ["val/validator/<name>"]
    )
    return keys


def _validator_direction(name: str) -> str | None:
    try:
        from galda.validators import VALIDATORS  # type: ignore[attr-defined]
    except ImportError:
        return None
    entry = VALIDATORS.get(name) if isinstance(VALIDATORS, Mapping) else None
    return getattr(entry, "direction", None)


def _validator_callback_problems(cfg: Any, monitor: str, name: str) -> list[GaldaError]:
    """A validator monitor needs a configured ValidatorCallback that computes it."""
    callbacks = _get(cfg, "callbacks") or {}
    nodes = [
        v
        for v in (callbacks.values() if hasattr(callbacks, "values") else [])
        if v is not None and str(_get(v, "_target_", "")).endswith("ValidatorCallback")
    ]
    if not nodes:
        return [
            ConfigError(
                f"selection.monitor={monitor}: no validator callback computes it; add "
                "callbacks.validators._target_=galda.validators.ValidatorCallback (the default "
                "callbacks have it)"
            )
        ]
    names = [_get(n, "names") for n in nodes]
    if all(ns and name not in list(ns) for ns in names):
        return [
            ConfigError(
                f"selection.monitor={monitor}: callbacks.validators.names does not include {name}; "
                "add it"
            )
        ]
    return []


def _selection_mode(cfg: Any) -> tuple[str | None, str | None]:
    """``selection.mode`` and, when it cannot be resolved (it may follow the monitor's
    direction through a resolver), the resolver's message instead."""
    try:
        return str(_get(cfg, "selection.mode", "max")), None
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, GaldaError) else err
        return None, str(cause).splitlines()[0]


def _check_monitor(cfg: Any) -> list[GaldaError]:
    monitor = str(_get(cfg, "selection.monitor", ""))
    parts = monitor.split("/")
    known = False
    if len(parts) == 3 and parts[0] == "val" and parts[1] in DOMAINS:
        known = parts[2] in VAL_METRICS
    elif len(parts) == 3 and parts[:2] == ["val", "validator"] and parts[2]:
        names = validator_names()
        known = names is None or parts[2] in names
    if not known:  # checked first: the mode may be derived from the monitor
        choices = ", ".join(loggable_monitors())
        return [
            ConfigError(
                f"selection.monitor={monitor}: not a logged metric; choose one of {choices}"
            )
        ]
    problems: list[GaldaError] = []
    mode, why = _selection_mode(cfg)
    if mode is None:
        problems.append(
            ConfigError(
                f"selection.mode: cannot be worked out ({why}); set selection.mode to max or min"
            )
        )
    elif mode not in ("min", "max"):
        problems.append(ConfigError(f"selection.mode={mode}: must be max or min"))
    want = _MODE_OF.get(parts[2]) if parts[1] in DOMAINS else _validator_direction(parts[2])
    if parts[1] == "validator":
        problems += _validator_callback_problems(cfg, monitor, parts[2])
    if want and mode in ("min", "max") and mode != want:
        problems.append(
            ConfigError(
                f"selection.mode={mode} with selection.monitor={monitor} keeps the worst epoch; "
                f"set selection.mode={want}"
            )
        )
    return problems


# ------------------------------------------------------------------------- config-only checks


def _method_class(cfg: Any) -> type | None:
    target = _get(cfg, "method.module._target_")
    if not target:
        return None
    from hydra.utils import get_class

    try:
        return get_class(str(target))
    except Exception:  # noqa: BLE001 - Hydra raises several types for a bad path
        return None


def method_uses_target_labels(cfg: Any) -> bool:
    """The method class's ``uses_target_labels`` flag (config ``needs_target_labels`` if absent)."""
    cls = _method_class(cfg)
    flag = getattr(cls, "uses_target_labels", None) if cls is not None else None
    if flag is None:
        flag = _get(cfg, "method.needs_target_labels", False)
    return bool(flag)


def _value_problems(cfg: Any) -> list[GaldaError]:
    """Seed, batch size, workers, learning rate and transfer weight out of their ranges."""
    problems: list[GaldaError] = []
    seed = _get(cfg, "seed")
    s = _integer(seed)
    if s is None or not 0 <= s < 2**32:
        problems.append(
            ConfigError(f"seed={seed}: must be a whole number from 0 to 2**32 - 1, e.g. seed=1")
        )

    bs = _get(cfg, "data.batch_size")
    b = _integer(bs)
    if b is None or b < 1:
        problems.append(
            ConfigError(
                f"data.batch_size={bs}: must be a whole number of at least 1 "
                "(images per domain per step), e.g. data.batch_size=128"
            )
        )

    workers = _get(cfg, "data.num_workers")
    if workers is not None and ((_integer(workers) or 0) < 0 or _integer(workers) is None):
        problems.append(ConfigError(f"data.num_workers={workers}: must be 0 or more"))

    lr = _get(cfg, "optim.optimizer.lr")
    if lr is not None and ((_number(lr) or 0.0) <= 0):
        problems.append(
            ConfigError(
                f"optim.optimizer.lr={lr}: the learning rate must be a "
                "positive number, e.g. optim.optimizer.lr=1e-3"
            )
        )

    width = _get(cfg, "model.net.width")
    if width is not None and ((_integer(width) or 0) < 1):
        problems.append(
            ConfigError(
                f"model.net.width={width}: must be a whole number of at least 1 (the filters' "
                "multiple), e.g. model.net.width=1"
            )
        )

    tw = _get(cfg, "method.module.transfer_weight")
    if tw is not None and (_number(tw) is None or _number(tw) < 0):  # type: ignore[operator]
        problems.append(ConfigError(f"method.module.transfer_weight={tw}: must be 0 or more"))
    return problems + _choice_problems(cfg)


def _choice_problems(cfg: Any) -> list[GaldaError]:
    """Keys that take one of a few words, or true / false."""
    problems: list[GaldaError] = []
    align = _get(cfg, "method.module.align")
    if align is not None:
        from galda.methods.base import ALIGN_MODES  # torch: only when a method sets it

        if align not in ALIGN_MODES:
            problems.append(
                ConfigError(
                    f"method.module.align={align}: must be one of {', '.join(ALIGN_MODES)}, "
                    "e.g. method.module.align=target"
                )
            )
    layer = _get(cfg, "model.net.feature_layer")
    if layer is not None:
        from galda.models import DeepMerge  # torch: only when a network sets it

        if layer not in DeepMerge.FEATURE_LAYERS:
            problems.append(
                ConfigError(
                    f"model.net.feature_layer={layer}: must be "
                    f"{' or '.join(DeepMerge.FEATURE_LAYERS)} (the layer the transfer loss "
                    "reads), e.g. model.net.feature_layer=flatten"
                )
            )
    memory_format = _get(cfg, "data.channels_last")
    if memory_format is not None:
        try:
            channels_last_enabled(memory_format, "cpu")  # the one place that knows the choices
        except ConfigError as err:
            problems.append(err)
    dsbn = _get(cfg, "method.module.domain_batchnorm")
    if dsbn is not None and not isinstance(dsbn, bool) and dsbn != "affine":
        problems.append(
            ConfigError(
                f"method.module.domain_batchnorm={dsbn}: must be true, false or affine "
                "(per-domain statistics, and with affine per-domain scale and shift too)"
            )
        )
    flag = _get(cfg, "reuse_host_memory")
    if flag is not None and not isinstance(flag, bool):
        problems.append(ConfigError(f"reuse_host_memory={flag}: must be true or false"))
    return problems + _stem_problems(cfg) + _averaging_problems(cfg)


def _averaging_problems(cfg: Any) -> list[GaldaError]:
    """A ``galda.callbacks.WeightEMA`` node whose ``horizon`` is not a fraction of the run."""
    problems: list[GaldaError] = []
    for name, node in (_get(cfg, "callbacks") or {}).items():
        if not isinstance(node, Mapping) or not str(node.get("_target_", "")).endswith("WeightEMA"):
            continue
        horizon = node.get("horizon", 0.05)
        value = _number(horizon)
        if value is None or not 0 < value <= 1:
            problems.append(
                ConfigError(
                    f"callbacks.{name}.horizon={horizon}: the fraction of the run the average "
                    f"spans must be in (0, 1], e.g. callbacks.{name}.horizon=0.05"
                )
            )
    return problems


def _stem_problems(cfg: Any) -> list[GaldaError]:
    """``method.module.target_stem``: true or false, and true only with per-domain forwards."""
    stem = _get(cfg, "method.module.target_stem")
    if stem is None or stem is False:
        return []
    if not isinstance(stem, bool):
        return [ConfigError(f"method.module.target_stem={stem}: must be true or false")]
    if not _get(cfg, "method.module.domain_batchnorm"):
        return [
            ConfigError(
                "method.module.target_stem=true: the target's own first convolution needs each "
                "domain forwarded on its own; add method.module.domain_batchnorm=true (or affine)"
            )
        ]
    return []


def _epoch_problems(cfg: Any) -> list[GaldaError]:
    """``trainer.max_epochs`` (and ``min_epochs``) that would never end or never start."""
    problems: list[GaldaError] = []
    max_epochs = _get(cfg, "trainer.max_epochs")
    max_steps = _integer(_get(cfg, "trainer.max_steps"))
    if max_epochs is not None:
        e = _integer(max_epochs)
        if e == -1 and (max_steps is None or max_steps < 1):
            problems.append(
                ConfigError(
                    "trainer.max_epochs=-1 with no trainer.max_steps trains "
                    "forever; set trainer.max_epochs to 1 or more"
                )
            )
        elif e is None or (e < 1 and e != -1):
            problems.append(
                ConfigError(
                    f"trainer.max_epochs={max_epochs}: must be a whole number "
                    "of at least 1, e.g. trainer.max_epochs=20"
                )
            )
        else:
            min_epochs = _integer(_get(cfg, "trainer.min_epochs"))
            if min_epochs is not None and e >= 1 and min_epochs > e:
                problems.append(
                    ConfigError(
                        f"trainer.min_epochs={min_epochs} is more than "
                        f"trainer.max_epochs={e}; lower trainer.min_epochs"
                    )
                )
    return problems


def _config_problems(cfg: Any) -> list[GaldaError]:
    problems = _value_problems(cfg) + _epoch_problems(cfg)
    problems += _split_fraction_problems(_get(cfg, "data.split_fractions"))
    target = _get(cfg, "method.module._target_")
    if target and _method_class(cfg) is None:
        problems.append(
            ConfigError(
                f"method.module._target_={target}: no such class; check the "
                "method's config file (conf/method/)"
            )
        )
    problems += _check_monitor(cfg)
    return problems


def _split_fraction_problems(fractions: Any) -> list[GaldaError]:
    if fractions is None:
        return []
    is_list = OmegaConf.is_list(fractions) or isinstance(fractions, (list, tuple))
    shown = str(list(fractions)) if is_list else str(fractions)
    values = [_number(f) for f in fractions] if is_list else []
    if (
        len(values) != 3
        or any(v is None or v < 0 for v in values)
        or abs(sum(v or 0.0 for v in values) - 1) > 1e-6
    ):
        return [
            ConfigError(
                f"data.split_fractions={shown}: must be three non-negative numbers "
                "(train, val, test) summing to 1, e.g. [0.7,0.1,0.2]"
            )
        ]
    zero = [s for s, v in zip(SPLITS, values) if v == 0]
    if zero:
        return [
            ConfigError(
                f"data.split_fractions={shown}: the {' and '.join(zero)} fraction is 0, so that "
                "split would be empty; give every split a positive share, e.g. "
                "data.split_fractions=[0.7,0.1,0.2]"
            )
        ]
    return []


def _output_problems(cfg: Any) -> list[GaldaError]:
    """The run folder (and its ``checkpoints/`` when present) must take a write: probed, not
    guessed, since permissions, read-only mounts and a full disk all show only on writing."""
    try:
        folder = _get(cfg, "paths.output_dir")
    except (OmegaConfBaseException, ValueError):  # ${hydra:...} outside a Hydra app
        return []
    if not folder:
        return []
    run_dir = Path(str(folder))
    for path in (run_dir, run_dir / "checkpoints"):
        if path is run_dir or path.is_dir():
            try:
                probe_writable(path)
            except OSError as err:
                return [cannot_write(path, err, "the run folder", RUN_FOLDER_KEYS)]
    return []


def preflight_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Check the settings that need no data, and that the run folder can be written; raise
    ConfigError (or WriteError) listing every problem found."""
    _raise(_config_problems(cfg) + _output_problems(cfg))


# --------------------------------------------------------------------------- checks with data


@dataclass
class DomainFile:
    """What preflight knows about one domain file without loading its images."""

    role: str
    path: Path
    n: int
    image_shape: tuple[int, int, int]
    labels: np.ndarray | None
    attrs: dict[str, Any]
    galaxy_id: np.ndarray

    @property
    def labelled(self) -> bool:
        return self.labels is not None


def read_headers(paths: Mapping[str, os.PathLike | str]) -> dict[str, DomainFile]:
    """Both domain files' shapes, labels, ids and attributes (images are not read)."""
    from galda.data.h5format import DataFormatError, read_domain

    out = {}
    for role in DOMAINS:
        path = Path(paths[role])
        try:
            dd = read_domain(path, load_images=False)
        except DataFormatError as err:
            raise DataError(f"{err} (data.{role}_path)") from err
        out[role] = DomainFile(
            role=role,
            path=path,
            n=len(dd.galaxy_id),
            image_shape=tuple(int(s) for s in dd.images.shape[1:]),  # type: ignore[arg-type]
            labels=dd.labels,
            attrs=dict(dd.attrs),
            galaxy_id=dd.galaxy_id,
        )
    return out


def split_sizes(
    files: Mapping[str, DomainFile], fractions: Sequence[float], split_seed: int
) -> dict[str, dict[str, int]]:
    """Images per domain and split, by the DataModule's galaxy split (no images needed).

    Mirrors ``DomainAdaptationDataModule.setup``: ids of both domains, stratified by the source
    labels (a test checks the two agree).
    """
    from galda.data.datamodule import split_galaxies

    src, tgt = files["source"], files["target"]
    ids = np.concatenate([src.galaxy_id, tgt.galaxy_id])
    src_classes = src.labels if src.labels is not None else np.zeros(src.n, int)
    classes = np.concatenate([src_classes, np.full(tgt.n, -1)])
    order = np.argsort(ids, kind="stable")
    split = split_galaxies(ids[order], list(fractions), int(split_seed), classes[order])
    return {
        d: {s: int(np.isin(files[d].galaxy_id, split[s]).sum()) for s in SPLITS} for d in DOMAINS
    }


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _role_problems(files: dict[str, DomainFile], allow_same: bool) -> list[GaldaError]:
    src, tgt = files["source"], files["target"]
    if _same_file(src.path, tgt.path):
        if allow_same:
            log.warning("data.allow_same_file=true: %s serves as both source and target", src.path)
            return []
        return [
            DataError(
                f"{src.path}: given as both data.source_path and data.target_path; give two files, "
                "or set data.allow_same_file=true to use one file for both domains"
            )
        ]
    claimed = {r: str(files[r].attrs.get("domain", "")).lower() for r in DOMAINS}
    if claimed == {"source": "target", "target": "source"}:
        return [
            DataError(
                f"{src.path} is a target file and {tgt.path} a source file (their 'domain' "
                "attributes): data.source_path and data.target_path are swapped; exchange them"
            )
        ]
    problems: list[GaldaError] = []
    for role, f in files.items():
        if claimed[role] in DOMAINS and claimed[role] != role:
            problems.append(
                DataError(
                    f"{f.path}: a {claimed[role]} file (its 'domain' attribute) given as "
                    f"data.{role}_path; give a {role} file there"
                )
            )
    return problems


def _model_problems(cfg: Any, shape: tuple[int, int, int], where: Path) -> list[GaldaError]:
    c, h, w = shape
    net = _get(cfg, "model.net")
    if net is None:
        return []
    problems: list[GaldaError] = []
    channels = _get(cfg, "model.net.in_channels")
    if channels is not None and _integer(channels) != c:
        problems.append(
            ConfigError(
                f"model.net.in_channels={channels} but {where} has {c} band(s); set "
                f"model.net.in_channels={c}"
            )
        )
    size = _get(cfg, "model.net.image_size")
    if size is not None and _integer(size) != h:
        problems.append(
            ConfigError(
                f"model.net.image_size={size} but the images in {where} are {h}x{w} pixels; set "
                f"model.net.image_size={h}"
            )
        )
    if problems:
        return problems
    err = _dry_forward(net, shape)
    if err is not None:
        name = _get(cfg, "model.name", "?")
        problems.append(
            ConfigError(
                f"model={name} cannot take {c}x{h}x{w} images from {where} ({err}); choose another "
                "model or ingest the images at another size"
            )
        )
    return problems


def _dry_forward(net_cfg: Any, shape: tuple[int, int, int]) -> str | None:
    """Build the network and pass one zero image through it; the error text, or None."""
    import warnings

    import torch
    from hydra.utils import instantiate

    # the network's random initialisation must not shift the training run's random stream
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net = instantiate(net_cfg) if not isinstance(net_cfg, torch.nn.Module) else net_cfg
            net.eval()
            with torch.no_grad():
                net(torch.zeros((1, *shape)))
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            return str(err).strip().splitlines()[0][:200]
    return None


def _split_problems(
    files: dict[str, DomainFile], sizes: dict[str, dict[str, int]], fractions: Sequence[float]
) -> list[GaldaError]:
    problems: list[GaldaError] = []
    for role in DOMAINS:
        f = files[role]
        empty = [s for s in SPLITS if sizes.get(role, {}).get(s, 0) == 0]
        if not empty:
            continue
        n_gal = len(np.unique(f.galaxy_id))
        frac = ", ".join(f"{s} {fractions[SPLITS.index(s)]:g}" for s in empty)
        problems.append(
            DataError(
                f"{f.path}: the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} of the "
                f"{role} domain would be empty "
                f"({f.n} images of {n_gal} galaxies; data.split_fractions gives {frac}); use a "
                "larger data set or raise those data.split_fractions"
            )
        )
    return problems


def _labels_problems(cfg: Any, files: dict[str, DomainFile]) -> list[GaldaError]:
    problems: list[GaldaError] = []
    src, tgt = files["source"], files["target"]
    if not src.labelled:
        problems.append(
            DataError(
                f"{src.path}: the source file has no labels; the source domain must be labelled "
                "(ingest it with its labels, e.g. --y y.npy)"
            )
        )
    method = _get(cfg, "method.name", "?")
    if method_uses_target_labels(cfg) and not tgt.labelled:
        # one line: such a method (the oracle) also selects on target labels
        problems.append(
            DataError(
                f"{tgt.path}: method={method} trains on target labels, but this target file has "
                "none; use a labelled target file or another method"
            )
        )
        return problems
    monitor = str(_get(cfg, "selection.monitor", ""))
    if monitor.startswith("val/target/") and not tgt.labelled:
        problems.append(
            DataError(
                f"{tgt.path}: selection.monitor={monitor} needs target labels, but this target "
                "file has none; use selection.monitor=val/source/acc or a val/validator/<name>"
            )
        )
    return problems


def _warnings(cfg: Any, files: dict[str, DomainFile]) -> list[str]:
    out = []
    monitor = str(_get(cfg, "selection.monitor", ""))
    if monitor.startswith("val/target/") and files["target"].labelled:
        out.append(
            f"selection.monitor={monitor} selects the checkpoint with TARGET LABELS: this "
            "run's results are marked ‡ (not unsupervised domain adaptation)"
        )
    src, tgt = files["source"], files["target"]
    shared = np.intersect1d(src.galaxy_id, tgt.galaxy_id).size
    if shared and src.n != tgt.n:
        out.append(
            f"{src.path} ({src.n} images) and {tgt.path} ({tgt.n} images) share "
            f"{shared} galaxy ids but differ in size: the split treats equal ids as the "
            "same galaxy; if the domains are not paired, give them distinct galaxy ids"
        )
    bands = {r: files[r].attrs.get("band_names") for r in DOMAINS}
    if all(isinstance(b, list) for b in bands.values()) and bands["source"] != bands["target"]:
        out.append(
            f"band names differ between domains: {bands['source']} in {src.path}, "
            f"{bands['target']} in {tgt.path}; channels are matched by position"
        )
    return out


def _datamodule_paths(cfg: Any, datamodule: Any) -> dict[str, Path]:
    paths = getattr(datamodule, "paths", None) if datamodule is not None else None
    if paths:
        return {d: Path(paths[d]) for d in DOMAINS}
    return {d: Path(str(_get(cfg, f"data.{d}_path"))) for d in DOMAINS}


def _ensure_files(paths: dict[str, Path], datamodule: Any) -> None:
    """Raise the DataModule's 'file not found' message (with how to get the data) if needed."""
    if all(p.exists() for p in paths.values()):
        return
    if datamodule is not None and hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    missing = [f"data.{d}_path={p}" for d, p in paths.items() if not p.exists()]
    if missing:
        raise DataError(f"{missing[0]}: file not found; set the path, or paths.data_dir")


def _storage_problems(cfg: Any, paths: dict[str, Path], datamodule: Any) -> list[GaldaError]:
    """``data.out_of_core`` resolved for these files, and its conflict with ``data.on_device``."""
    from galda.data.datamodule import resolve_out_of_core

    try:
        if hasattr(datamodule, "resolve_out_of_core"):
            datamodule.resolve_out_of_core()
        else:
            resolve_out_of_core(
                _get(cfg, "data.out_of_core", "auto"),
                [paths[d] for d in DOMAINS],
                bool(_get(cfg, "data.on_device", False)),
            )
    except GaldaError as err:
        return [err if isinstance(err, (ConfigError, DataError)) else DataError(str(err))]
    return []


def preflight(cfg: DictConfig | Mapping[str, Any], datamodule: Any = None) -> None:
    """Check the config, then the config against the data files, before any training.

    ``datamodule``: the run's DataModule, best not yet set up (its ``paths``, ``split_fractions``
    and ``split_seed`` are used, and ``split_sizes`` when it was set up); None → ``cfg.data``.
    Simulated files must exist already (``galda.provision.ensure_data``). Raises ConfigError /
    DataError naming every problem; logs warnings for legal but doubtful settings.
    """
    problems = _config_problems(cfg)
    if any(isinstance(p, ConfigError) and "split_fractions" in str(p) for p in problems):
        _raise(problems)  # the split sizes below need valid fractions
    paths = _datamodule_paths(cfg, datamodule)
    _ensure_files(paths, datamodule)
    files = read_headers(paths)
    problems += _storage_problems(cfg, paths, datamodule)
    allow_same = bool(_get(cfg, "data.allow_same_file", False))
    problems += _role_problems(files, allow_same)
    problems += _labels_problems(cfg, files)

    shapes = {r: files[r].image_shape for r in DOMAINS}
    if shapes["source"] != shapes["target"]:
        problems.append(
            DataError(
                f"{files['target'].path}: images are {'x'.join(map(str, shapes['target']))} "
                f"(C x H x W) but {files['source'].path} has "
                f"{'x'.join(map(str, shapes['source']))}; both domains need the same bands and size"
            )
        )
    else:
        problems += _model_problems(cfg, shapes["source"], files["source"].path)

    fractions = getattr(datamodule, "split_fractions", None) or _get(cfg, "data.split_fractions")
    fractions = [float(f) for f in (fractions or (0.7, 0.1, 0.2))]
    seed = getattr(datamodule, "split_seed", None)
    seed = int(seed if seed is not None else _get(cfg, "data.split_seed", 0))
    sizes = getattr(datamodule, "split_sizes", None) or split_sizes(files, fractions, seed)
    problems += _split_problems(files, sizes, fractions)
    _raise(problems)
    for line in _warnings(cfg, files):
        log.warning("%s", line)
