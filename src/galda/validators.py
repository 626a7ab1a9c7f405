"""Label-free validators: scores to choose checkpoints or hyper-parameters without target labels.

Every validator is computed from the **labelled source-validation** outputs and the
**unlabelled target-validation** outputs of one model (logits and features); target labels are
never read here. ``VALIDATORS`` maps a name to the function, the direction in which it is better
("max" or "min") and the inputs it needs; :class:`ValidatorCallback` computes them all at the end of
every validation epoch and logs ``val/validator/<name>``, so ``selection.monitor`` (checkpointing,
early stopping, hyper-parameter search) can name any of them, with the mode given by
:func:`direction`.

Inputs (the names used in ``Validator.needs``): ``source_logits`` (N_s, C), ``source_labels``
(N_s,), ``source_features`` (N_s, D), ``target_logits`` (N_t, C), ``target_features`` (N_t, D).
Computation is in float64 on the CPU (a few ms for 300 + 300 images; see docs/validation.md).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, cast

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor

from galda.errors import GaldaError

log = logging.getLogger(__name__)

PREFIX = "val/validator/"
INPUTS = ("source_logits", "source_labels", "source_features", "target_logits", "target_features")
Direction = Literal["max", "min"]

__all__ = [
    "PREFIX",
    "VALIDATORS",
    "Validator",
    "ValidatorCallback",
    "batch_nuclear_norm",
    "compute_validators",
    "deep_embedded_validation",
    "dev_risk",
    "direction",
    "fit_logistic_regression",
    "information_maximisation",
    "proxy_a_distance",
    "soft_neighbourhood_density",
    "source_accuracy",
    "source_loss",
    "target_entropy",
    "target_probability_cross_fit",
    "two_fold_split",
]


def _f64(x: Tensor) -> Tensor:
    """float64 on the tensor's own device (the CPU for devices without float64, e.g. MPS)."""
    x = x.detach()
    return x.to("cpu", torch.float64) if x.device.type == "mps" else x.to(torch.float64)


def _entropies(logits: Tensor) -> Tensor:
    """Per-row H(softmax(z)) = −Σ_c p_c log p_c, from log-softmax (exact 0·log 0 = 0)."""
    log_p = F.log_softmax(_f64(logits), dim=1)
    return -(log_p.exp() * log_p).sum(1)


# --------------------------------------------------------------------------- source validation


def source_accuracy(source_logits: Tensor, source_labels: Tensor) -> float:
    """Source-validation accuracy, mean 1[argmax z_i = y_i]: the usual choice, label-free for the
    target, but it need not follow target accuracy once the domains are being aligned."""
    labels = source_labels.to(source_logits.device)
    return float((source_logits.argmax(1) == labels).double().mean())


def source_loss(source_logits: Tensor, source_labels: Tensor) -> float:
    """Source-validation cross-entropy, −mean log p_{y_i}(x_i)."""
    logits = _f64(source_logits)
    return float(F.cross_entropy(logits, source_labels.to(logits.device).long()))


# --------------------------------------------------------------------------- target predictions


def target_entropy(target_logits: Tensor) -> float:
    """Mean prediction entropy on the target, (1/N) Σ_i H(p_i), H(p) = −Σ_c p_c log p_c (nats).

    Lower is better (confident predictions; Morerio et al. 2018, ICLR, "Minimal-entropy correlation
    alignment"). It rewards over-confident and collapsed predictors too.
    """
    return float(_entropies(target_logits).mean())


def information_maximisation(target_logits: Tensor) -> float:
    """Information maximisation, IM = H(p̄) − (1/N) Σ_i H(p_i), with p̄ = (1/N) Σ_i p_i.

    The mutual information between a target input and its predicted class: high when each
    prediction is confident (low mean entropy) *and* the classes are used evenly (high entropy of
    the mean). Sign convention: this is the *negative* of the IM loss minimised by Shi & Sha (2012,
    ICML) and SHOT (Liang et al. 2020), so higher is better, as in the IM validator of Musgrave et
    al. (2022, arXiv:2208.07360). 0 ≤ IM ≤ log C.
    """
    log_p = F.log_softmax(_f64(target_logits), dim=1)
    p_mean = log_p.exp().mean(0)
    h_mean = -(p_mean * torch.log(p_mean.clamp_min(1e-300))).sum()
    return float(h_mean - _entropies(target_logits).mean())


def batch_nuclear_norm(target_logits: Tensor) -> float:
    """Batch nuclear norm, ‖P‖_* / N with P the (N, C) target softmax matrix (sum of its singular
    values). Higher is better: both confident (discriminable) and diverse predictions raise it.
    Cui et al. 2020, CVPR, "Towards discriminability and diversity: batch nuclear-norm maximization
    under label insufficient situations" (their loss is −‖P‖_*/B).
    """
    p = F.softmax(_f64(target_logits), dim=1)
    return float(torch.linalg.svdvals(p).sum() / p.shape[0])


def soft_neighbourhood_density(
    target_logits: Tensor, temperature: float = 0.05, chunk: int = 2048
) -> float:
    """Soft neighbourhood density (Saito et al. 2021, ICCV, "Tune it the right way").

    With p̂_i = p_i / ‖p_i‖ the L2-normalised target softmax vectors, s_ij = p̂_i·p̂_j (cosine
    similarity) and, excluding self (j ≠ i), Q_ij = exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ):
    SND = (1/N) Σ_i H(Q_i) = −(1/N) Σ_i Σ_{j≠i} Q_ij log Q_ij, τ = 0.05. Higher is better (dense
    soft neighbourhoods). Rows are processed ``chunk`` at a time (memory O(chunk·N)).
    """
    p = F.normalize(F.softmax(_f64(target_logits), dim=1), dim=1)
    n = p.shape[0]
    if n < 2:
        return math.nan
    total = torch.zeros((), dtype=torch.float64, device=p.device)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(n, start + chunk), device=p.device)
        s = (p[rows] @ p.T) / temperature
        s[torch.arange(len(rows), device=p.device), rows] = -math.inf
        log_q = F.log_softmax(s, dim=1)
        q = log_q.exp()
        total += -(q * torch.where(q > 0, log_q, torch.zeros_like(log_q))).sum()
    return float(total / n)


# --------------------------------------------------------------------------- domain classifier


def fit_logistic_regression(x: Tensor, y: Tensor, l2: float) -> tuple[Tensor, Tensor]:
    """Weights w and bias b minimising (1/n) Σ BCE(σ(x_i·w + b), y_i) + (l2/2)‖w‖² (L-BFGS,
    float64; the bias is not penalised). Equals scikit-learn's ``LogisticRegression(C=1/(n·l2))``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = _f64(x).clone()
        y = _f64(y).clone()
        theta = torch.zeros(
            x.shape[1] + 1, dtype=torch.float64, device=x.device, requires_grad=True
        )
        opt = torch.optim.LBFGS(
            [theta],
            lr=1.0,
            # converged well within sklearn's tolerance; tighter settings cost seconds per
            # epoch on tiny, separable data without changing any validator's value
            max_iter=200,
            tolerance_grad=1e-7,
            tolerance_change=1e-10,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            opt.zero_grad()
            z = x @ theta[:-1] + theta[-1]
            loss = F.binary_cross_entropy_with_logits(z, y) + 0.5 * l2 * theta[:-1].square().sum()
            loss.backward()
            return loss

        opt.step(closure)
    theta = theta.detach()
    return theta[:-1], theta[-1]


def two_fold_split(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random split of range(n) into two halves (the first gets ⌊n/2⌋)."""
    perm = torch.randperm(n, generator=generator)
    return perm[: n // 2], perm[n // 2 :]


class CrossFit(NamedTuple):
    """Out-of-fold P(target | f) for every source and target row, and, for each source row, the
    ratio n_s/n_t of the source and target rows its classifier was trained on."""

    source_probs: Tensor
    target_probs: Tensor
    source_prior_ratio: Tensor


def target_probability_cross_fit(
    source_features: Tensor, target_features: Tensor, seed: int = 0, l2: float = 0.1
) -> CrossFit:
    """Two-fold cross-fitted linear domain classifier on features (target = 1, source = 0).

    Source and target rows are each split in two halves (``seed``); a logistic regression
    (:func:`fit_logistic_regression`, features standardised with the training half's mean and
    standard deviation) trained on one half of both domains scores the other half, and vice versa,
    so every row gets a held-out probability.
    """
    fs, ft = _f64(source_features), _f64(target_features)
    g = torch.Generator().manual_seed(int(seed))
    s_halves, t_halves = two_fold_split(len(fs), g), two_fold_split(len(ft), g)
    p_s = torch.empty(len(fs), dtype=torch.float64, device=fs.device)
    p_t = torch.empty(len(ft), dtype=torch.float64, device=fs.device)
    ratio = torch.empty(len(fs), dtype=torch.float64, device=fs.device)
    for k in (0, 1):
        s_fit, s_out = s_halves[k], s_halves[1 - k]
        t_fit, t_out = t_halves[k], t_halves[1 - k]
        x = torch.cat([fs[s_fit], ft[t_fit]])
        y = torch.cat([torch.zeros(len(s_fit)), torch.ones(len(t_fit))]).to(x)
        mean, std = x.mean(0), x.std(0, unbiased=False)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant features → 0
        w, b = fit_logistic_regression((x - mean) / std, y, l2)
        p_s[s_out] = torch.sigmoid(((fs[s_out] - mean) / std) @ w + b)
        p_t[t_out] = torch.sigmoid(((ft[t_out] - mean) / std) @ w + b)
        ratio[s_out] = len(s_fit) / len(t_fit)
    return CrossFit(p_s, p_t, ratio)


def dev_risk(losses: Tensor, weights: Tensor) -> float:
    """DEV's control-variate risk (You et al. 2019, ICML, "Towards accurate model selection in deep
    unsupervised domain adaptation"), with L_i = w_i ℓ_i:

        η = −Cov(L, w) / Var(w)   (unbiased estimates; η = 0 when Var(w) = 0)
        DEV = mean(L) + η · mean(w) − η

    ``mean(w)`` has expectation 1 under the source, so the η terms cancel in expectation and
    reduce the variance of the importance-weighted loss.
    """
    losses, weights = _f64(losses), _f64(weights)
    weighted = weights * losses
    if len(weights) < 2:
        return math.nan
    var_w = weights.var(unbiased=True)
    cov = ((weighted - weighted.mean()) * (weights - weights.mean())).sum() / (len(weights) - 1)
    eta = -cov / var_w if var_w > 0 else torch.zeros_like(var_w)
    return float(weighted.mean() + eta * weights.mean() - eta)


def deep_embedded_validation(
    source_features: Tensor,
    source_logits: Tensor,
    source_labels: Tensor,
    target_features: Tensor,
    seed: int = 0,
    l2: float = 0.1,
    clip: float = 1e-6,
    cross_fit: CrossFit | None = None,
) -> float:
    """Deep embedded validation, DEV (You et al. 2019, ICML): the source-validation loss weighted
    by the density ratio w(f) = p_t(f)/p_s(f), with a control variate (:func:`dev_risk`).

    w_i = (n_s/n_t) · d_i / (1 − d_i), d_i = P(target | f_i) from a linear domain classifier on the
    features (:func:`target_probability_cross_fit`: held-out two-fold, so every source-validation
    row is weighted by a classifier that did not see it; d clipped to [clip, 1 − clip]).
    ℓ_i is the cross-entropy of source row i. Lower is better. ``cross_fit``: a precomputed
    :func:`target_probability_cross_fit` of these features (shared with the proxy A-distance).
    """
    if len(source_features) < 4 or len(target_features) < 4:
        return math.nan
    fit = (
        cross_fit
        if cross_fit is not None
        else target_probability_cross_fit(source_features, target_features, seed, l2)
    )
    d = fit.source_probs.clamp(clip, 1.0 - clip)
    weights = fit.source_prior_ratio * d / (1.0 - d)
    logits = _f64(source_logits)
    losses = F.cross_entropy(logits, source_labels.to(logits.device).long(), reduction="none")
    return dev_risk(losses, weights)


def proxy_a_distance(
    source_features: Tensor,
    target_features: Tensor,
    seed: int = 0,
    l2: float = 0.1,
    cross_fit: CrossFit | None = None,
) -> float:
    """Proxy A-distance of the features, 2(1 − 2ε) (Ben-David et al. 2007, NeurIPS, "Analysis of
    representations for domain adaptation"), ε the held-out error of a linear domain classifier
    (:func:`target_probability_cross_fit`), balanced over the two domains:
    ε = ½[mean_i 1(d_i > ½ | source) + mean_j 1(d_j ≤ ½ | target)].

    2 = perfectly separable domains, ≈ 0 = indistinguishable (negative when the classifier is worse
    than chance). Lower is better for alignment, but collapsed features also score low.
    """
    if len(source_features) < 4 or len(target_features) < 4:
        return math.nan
    fit = (
        cross_fit
        if cross_fit is not None
        else target_probability_cross_fit(source_features, target_features, seed, l2)
    )
    error = 0.5 * (
        float((fit.source_probs > 0.5).double().mean())
        + float((fit.target_probs <= 0.5).double().mean())
    )
    return 2.0 * (1.0 - 2.0 * error)


# --------------------------------------------------------------------------- registry


class Validator(NamedTuple):
    """A validator: ``fn(**{need: tensor})`` → float, better when larger ("max") or smaller."""

    fn: Callable[..., float]
    direction: Direction
    needs: tuple[str, ...]


VALIDATORS: dict[str, Validator] = {
    "source_acc": Validator(source_accuracy, "max", ("source_logits", "source_labels")),
    "source_loss": Validator(source_loss, "min", ("source_logits", "source_labels")),
    "entropy": Validator(target_entropy, "min", ("target_logits",)),
    "im": Validator(information_maximisation, "max", ("target_logits",)),
    "bnm": Validator(batch_nuclear_norm, "max", ("target_logits",)),
    "snd": Validator(soft_neighbourhood_density, "max", ("target_logits",)),
    "dev": Validator(
        deep_embedded_validation,
        "min",
        ("source_features", "source_logits", "source_labels", "target_features"),
    ),
    "pad": Validator(proxy_a_distance, "min", ("source_features", "target_features")),
}

_MAX_SUFFIXES = ("/acc", "/auroc", "/f1", "/precision", "/recall")
_MIN_SUFFIXES = ("/loss", "/brier")


def direction(monitor: str) -> Direction:
    """ "max" or "min" for a selection metric: ``val/validator/<name>`` from the registry, else by
    the metric's suffix (acc, auroc, f1, precision, recall → max; loss, brier → min)."""
    monitor = str(monitor)
    if monitor.startswith(PREFIX):
        name = monitor[len(PREFIX) :]
        if name not in VALIDATORS:
            raise GaldaError(
                f"selection.monitor={monitor}: no validator {name!r}; "
                f"choose one of {', '.join(VALIDATORS)}"
            )
        return VALIDATORS[name].direction
    if monitor.endswith(_MAX_SUFFIXES):
        return "max"
    if monitor.endswith(_MIN_SUFFIXES):
        return "min"
    raise GaldaError(
        f"selection.monitor={monitor}: unknown direction; set selection.mode to max or min"
    )


def compute_validators(
    inputs: Mapping[str, Tensor | None], names: list[str] | None = None, seed: int = 0
) -> dict[str, float]:
    """Every validator in ``names`` (default: all) whose inputs are present; ``seed`` fixes the
    domain classifier's split (DEV, proxy A-distance, which share one cross-fitted classifier)."""
    values: dict[str, float] = {}
    shared: dict[str, CrossFit] = {}
    for name in names or list(VALIDATORS):
        if name not in VALIDATORS:
            raise GaldaError(
                f"validators: no validator {name!r}; choose from {', '.join(VALIDATORS)}"
            )
        validator = VALIDATORS[name]
        kwargs: dict[str, Any] = {need: inputs.get(need) for need in validator.needs}
        if any(v is None or len(v) == 0 for v in kwargs.values()):
            continue
        parameters = inspect.signature(validator.fn).parameters
        if "seed" in parameters:
            kwargs["seed"] = seed
        if "cross_fit" in parameters:
            fs, ft = kwargs["source_features"], kwargs["target_features"]
            if min(len(fs), len(ft)) >= 4:
                if "fit" not in shared:
                    shared["fit"] = target_probability_cross_fit(fs, ft, seed=seed)
                kwargs["cross_fit"] = shared["fit"]
        values[name] = validator.fn(**kwargs)
    return values


# --------------------------------------------------------------------------- Lightning callback


class ValidatorCallback(pl.Callback):
    """Collects validation outputs and logs every validator as ``val/validator/<name>``.

    Expects ``validation_step`` to return ``{"domain": "source" | "target", "features", "logits",
    "labels"}`` (labels are read for the source only). Under DDP the outputs of all processes
    are gathered before computing, and every process logs the same values. ``history`` keeps the
    values of every epoch (saved in checkpoints), so the values at the selected epoch can be
    written to ``results.json``.

    Args:
        names: validators to compute (default: all of ``VALIDATORS``).
        seed: the domain classifier's split (DEV, proxy A-distance).
        device: ``"cpu"`` (default) computes on the CPU; ``"auto"`` where the outputs are (the
            GPU during GPU training; float64 throughout, so results match the CPU's to rounding).
    """

    def __init__(self, names: list[str] | None = None, seed: int = 0, device: str = "cpu") -> None:
        super().__init__()
        if device not in ("cpu", "auto"):
            raise GaldaError(f"callbacks.validators.device={device}: use cpu or auto")
        self.device = device
        for name in names or []:
            if name not in VALIDATORS:
                raise GaldaError(
                    f"callbacks.validators.names: no validator {name!r}; "
                    f"choose from {', '.join(VALIDATORS)}"
                )
        self.names = list(names) if names else list(VALIDATORS)
        self.seed = int(seed)
        self.history: dict[int, dict[str, float]] = {}
        self.last_cost_s: float | None = None
        self._store: dict[str, dict[str, list[Tensor]]] = {}
        self._warned = False

    def values_at(self, epoch: int | None) -> dict[str, float]:
        """The validator values logged at ``epoch`` (empty when there are none)."""
        return dict(self.history.get(int(epoch), {})) if epoch is not None else {}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._store = {}

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, Mapping) or "domain" not in outputs:
            if not self._warned:
                log.warning(
                    "ValidatorCallback: validation_step returned no {'domain', 'features', "
                    "'logits', 'labels'} dict; no validators are logged"
                )
                self._warned = True
            return
        store = self._store.setdefault(str(outputs["domain"]), {})
        for key in ("features", "logits", "labels"):
            value = outputs.get(key)
            if value is not None:
                store.setdefault(key, []).append(value.detach())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._store:
            return
        started = time.perf_counter()
        inputs: dict[str, Tensor | None] = {}
        for domain in ("source", "target"):
            parts = self._store.get(domain, {})
            for key in ("features", "logits", "labels"):
                if key == "labels" and domain == "target":
                    continue  # never read: target labels must not select anything
                tensor = torch.cat(parts[key]) if parts.get(key) else None
                if tensor is not None and trainer.world_size > 1:
                    tensor = _gather_rows(pl_module, tensor)
                if tensor is not None and self.device == "cpu":
                    tensor = tensor.cpu()
                inputs[f"{domain}_{key}"] = tensor
        self._store = {}
        values = compute_validators(inputs, self.names, seed=self.seed)
        for name, value in values.items():
            pl_module.log(PREFIX + name, value, on_step=False, on_epoch=True, sync_dist=False)
        if trainer.state.fn == TrainerFn.FITTING:  # not a later trainer.validate() of a checkpoint
            self.history[int(trainer.current_epoch)] = values
        self.last_cost_s = time.perf_counter() - started
        log.debug("validators computed in %.3f s", self.last_cost_s)

    def state_dict(self) -> dict[str, Any]:
        return {"history": {int(k): dict(v) for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(k): dict(v) for k, v in state_dict.get("history", {}).items()}


def _gather_rows(pl_module: pl.LightningModule, tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` over processes along dim 0; ranks may hold different row counts."""
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = cast(Tensor, pl_module.all_gather(n)).reshape(-1).tolist()
    padded = tensor.new_zeros((int(max(sizes)), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = cast(Tensor, pl_module.all_gather(padded))
    return torch.cat([gathered[rank, : int(size)] for rank, size in enumerate(sizes)])
