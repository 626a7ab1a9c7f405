"""Transfer losses for domain adaptation (Ćiprijanović et al. 2020, arXiv:2011.03591).

- MMD with a sum of Gaussian kernels (paper Eq. 2-3), unbiased by default.
- Gradient reversal and its coefficient schedules for DANN (paper Eq. 4; Ganin et al. 2016).
- DeepMerge II extras (Ćiprijanović et al. 2021): Fisher loss and entropy minimisation.

Everything here is stateless apart from configuration (and the Fisher loss's learnable centres).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "PAPER_VARIANCES",
    "median_variances",
    "multi_kernel_mmd",
    "expansion_error_bound",
    "KERNEL_TOLERANCE",
    "MMDLoss",
    "GradientReversal",
    "grad_reverse",
    "ganin_coefficient",
    "reversal_coefficient",
    "REVERSAL_SCHEDULES",
    "FisherLoss",
    "entropy_loss",
    "domain_adversarial_loss",
]

#: The authors' 19 fixed kernel variances s, each used as exp(-d² / (2s)).
PAPER_VARIANCES: tuple[float, ...] = (
    1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0,
    100.0, 1e3, 1e4, 1e5, 1e6,
)  # fmt: skip

BANDWIDTH_MODES: tuple[str, ...] = ("median", "paper")
REVERSAL_SCHEDULES: tuple[str, ...] = ("constant", "ganin")


# --------------------------------------------------------------------------- MMD

#: Largest relative error of an off-diagonal kernel value k_ij tolerated from the fast distances.
KERNEL_TOLERANCE = 1e-4
DISTANCE_MODES: tuple[str, ...] = ("auto", "matmul", "direct")
#: Above this fraction of flagged pairs, ``auto`` recomputes the whole matrix by ``torch.cdist``.
EXACT_PAIRS_LIMIT = 0.1


class _GramSquaredDistances(torch.autograd.Function):
    """D_ij = ‖z_i‖² + ‖z_j‖² − 2 z_i·z_j for one pooled batch z (n, d), with a one-matmul backward.

    Negatives (cancellation) are clamped to 0 and the diagonal is set to exactly 0. Wherever
    D_ij = 0 (diagonal, clamped or coincident points) the true gradient of ‖z_i − z_j‖² is 0, so
    the upstream gradient A is masked there; then ∂L/∂z = 2 (rowsum(S) ∘ z − S z), S = A + Aᵀ.
    """

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:  # type: ignore[override]
        norms = (z * z).sum(1)
        d2 = torch.addmm(norms[:, None] + norms[None, :], z, z.T, alpha=-2.0)
        d2.clamp_min_(0.0).fill_diagonal_(0.0)
        ctx.save_for_backward(z, d2)
        return d2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        z, d2 = ctx.saved_tensors
        a = grad.masked_fill(d2 == 0, 0.0)
        s = a + a.T
        return torch.addmm(s.sum(1, keepdim=True) * z, s, z, beta=2.0, alpha=-2.0)


def _direct_squared_distances(pooled: Tensor, n_s: int) -> Tensor:
    """The pooled matrix of ‖z_i − z_j‖² by direct differences (exact 0 for equal points).

    Three ``torch.cdist`` blocks (source², target², cross; no matrix multiply) assembled into
    one symmetric matrix.
    """

    def block(a: Tensor, b: Tensor) -> Tensor:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2)

    source, target = pooled[:n_s], pooled[n_s:]
    cross = block(source, target)
    top = torch.cat([block(source, source), cross], dim=1)
    return torch.cat([top, torch.cat([cross.T, block(target, target)], dim=1)], dim=0)


def expansion_error_bound(z: Tensor) -> Tensor:
    """δ_ij = (2 + √d/2) · ε · (‖z_i‖² + ‖z_j‖²): a bound on |error| of ‖z_i‖² + ‖z_j‖² − 2 z_i·z_j.

    The cancellation leaves an absolute error proportional to the squared norms, not to the
    distance (ε: ``z``'s machine epsilon). Measured in float32 on 200 centred points (d = 4 …
    25,088; Gaussian, ReLU-like, clustered far from the origin, with outliers, with norms over
    four decades) the worst error was 1.6–12.6 ε(‖z_i‖² + ‖z_j‖²), below this bound.
    """
    with torch.no_grad():
        norms = (z * z).sum(1)
        scale = (2.0 + 0.5 * math.sqrt(z.shape[1])) * torch.finfo(z.dtype).eps
        return scale * (norms[:, None] + norms[None, :])


class _GaussianKernelSum(torch.autograd.Function):
    """k_ij = Σ_s exp(−D_ij/(2s)) and its slope g_ij = ∂k_ij/∂D_ij = −Σ_s exp(−D_ij/(2s))/(2s).

    The (n, n, n_kernels) terms live only inside the forward; the backward is grad ∘ g, so no
    per-kernel tensor is kept for autograd. Terms below 1.001·exp(log(tiny) + 1) (3.3e-38 in
    float32) are set to exactly 0: underflowing and subnormal values make exp 10–40× slower on
    x86 CPUs, and the authors' 1e-6 variances put almost every term there. The variances get
    no gradient (fixed, or the detached median heuristic).
    """

    @staticmethod
    def forward(ctx, sq_dist: Tensor, variances: Tensor):  # type: ignore[override]
        floor = math.log(torch.finfo(sq_dist.dtype).tiny) + 1.0
        rates = -0.5 / variances
        terms = (sq_dist.unsqueeze(-1) * rates).clamp_min_(floor).exp_()
        F.threshold(terms, 1.001 * math.exp(floor), 0.0, inplace=True)
        slope = terms @ rates
        ctx.save_for_backward(slope)
        ctx.mark_non_differentiable(slope)
        return terms.sum(-1), slope

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor, _grad_slope: Tensor | None):  # type: ignore[override]
        (slope,) = ctx.saved_tensors
        return grad * slope, None


def _pairs_needing_exact_distances(kernel: Tensor, slope: Tensor, bound: Tensor) -> Tensor:
    """Pairs (i < j, shape (k, 2)) whose k_ij an error δ_ij in D could move by > KERNEL_TOLERANCE.

    |Δk_ij| / k_ij ≤ δ_ij Σ_s e_ijs/(2s) / Σ_s e_ijs = δ_ij |g_ij| / k_ij, e_ijs = exp(−D_ij/(2s)):
    a kernel counts only where it is alive. A variance far below δ_ij matters only for pairs
    closer than a few hundred s (elsewhere its term is 0 either way), so the authors' 1e-6…1
    variances pass except for near-duplicate points, and the median set passes except for pairs
    of bright outliers (‖z‖² ~ 10⁵ against a median ‖z_i − z_j‖² ~ 10³ on the small simulated
    set). The diagonal is exact and excluded.
    """
    with torch.no_grad():
        ratio = torch.where(kernel > 0, slope.abs() * bound / kernel, torch.zeros_like(kernel))
        return torch.nonzero(torch.triu(ratio, diagonal=1) > KERNEL_TOLERANCE)


def _with_exact_pairs(sq_dist: Tensor, pooled: Tensor, pairs: Tensor) -> Tensor:
    """``sq_dist`` with the entries (i, j) and (j, i) of ``pairs`` replaced by Σ (z_i − z_j)²."""
    i, j = pairs[:, 0], pairs[:, 1]
    exact = (pooled[i] - pooled[j]).pow(2).sum(1)
    return sq_dist.index_put((i, j), exact).index_put((j, i), exact)


def _kernel_matrix(
    pooled: Tensor,
    n_s: int,
    variances: Callable[[Tensor], Tensor],
    distances: str,
) -> tuple[Tensor, Tensor]:
    """k_ij = Σ_s exp(−‖z_i − z_j‖²/(2s)) over the pooled batch, and the variances s used.

    ``variances`` maps the squared-distance matrix to s (fixed, or the median heuristic).
    ``distances``: ``"matmul"`` (:class:`_GramSquaredDistances` of the batch centred on its
    mean: network features share a large common part, ‖z‖² ≫ ‖z_i − z_j‖², and centring
    removes it from the cancellation error), ``"direct"`` (``torch.cdist`` without matrix
    multiply), or ``"auto"``: matmul, then the pairs :func:`_pairs_needing_exact_distances`
    flags (bound :func:`expansion_error_bound` of the centred batch) recomputed from direct
    differences; all of them by ``torch.cdist`` when more than ``EXACT_PAIRS_LIMIT`` of the
    pairs are flagged. Reading the flags synchronises a GPU once per call; name a mode to
    avoid it.
    """
    if distances not in DISTANCE_MODES:
        raise ValueError(f"distances must be one of {DISTANCE_MODES}, got {distances!r}")
    if distances == "direct":
        d2 = _direct_squared_distances(pooled, n_s)
    else:  # centred: distances are unchanged, norms (and the expansion's error) shrink
        centred = pooled - pooled.mean(0, keepdim=True)
        d2 = _GramSquaredDistances.apply(centred)
    s = variances(d2)
    kernel, slope = _GaussianKernelSum.apply(d2, s)
    if distances != "auto":
        return kernel, s
    pairs = _pairs_needing_exact_distances(kernel.detach(), slope, expansion_error_bound(centred))
    if len(pairs) == 0:
        return kernel, s
    n = len(pooled)
    if len(pairs) > EXACT_PAIRS_LIMIT * n * (n - 1) / 2:
        d2 = _direct_squared_distances(pooled, n_s)
    else:
        d2 = _with_exact_pairs(d2, pooled, pairs)
    s = variances(d2)
    return _GaussianKernelSum.apply(d2, s)[0], s


def _pooled(source: Tensor, target: Tensor) -> Tensor:
    """[source; target] flattened, in at least float32 (half precision would ruin the expansion)."""
    pooled = torch.cat([source.reshape(len(source), -1), target.reshape(len(target), -1)])
    return pooled.float() if torch.finfo(pooled.dtype).bits < 32 else pooled


def _as_variances(variances: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    """Variances as a 1-D tensor on ``like``'s device/dtype, validated positive."""
    s = torch.as_tensor(variances, dtype=like.dtype, device=like.device).reshape(-1)
    if s.numel() == 0 or not bool((s > 0).all()):
        raise ValueError("kernel variances must be a non-empty set of positive numbers")
    return s


def _median_set(sq_dist: Tensor, n_kernels: int, multiplier: float) -> Tensor:
    """s_k = m · multiplier^(k − (K−1)/2), m = median of the upper-triangle entries (detached)."""
    n = len(sq_dist)
    i, j = torch.triu_indices(n, n, offset=1, device=sq_dist.device)
    median = sq_dist.detach()[i, j].median()
    median = median.clamp_min(max(torch.finfo(sq_dist.dtype).tiny, 1e-12))  # all points equal
    exponents = torch.arange(n_kernels, dtype=sq_dist.dtype, device=sq_dist.device)
    return median * multiplier ** (exponents - (n_kernels - 1) / 2.0)


def _check_median_args(n_kernels: int, multiplier: float, n: int) -> None:
    if n_kernels < 1:
        raise ValueError(f"n_kernels must be >= 1, got {n_kernels}")
    if multiplier <= 0:
        raise ValueError(f"multiplier must be > 0, got {multiplier}")
    if n < 2:
        raise ValueError("need at least two samples in total for the median heuristic")


def median_variances(
    source: Tensor, target: Tensor, n_kernels: int = 5, multiplier: float = 2.0
) -> Tensor:
    """Multi-scale variances around the median heuristic, without gradient.

    m = median_{i<j} ‖z_i − z_j‖² over the pooled features z = [source; target];
    s_k = m · multiplier^(k − (K−1)/2), k = 0..K−1 (geometric, centred on m), so the middle kernel
    is exp(−d²/(2m)). Median heuristic: Gretton et al. 2012; multi-kernel set as in
    Long et al. 2015 (DAN). Detached: the bandwidths are a data-dependent constant.
    """
    _check_median_args(n_kernels, multiplier, len(source) + len(target))
    with torch.no_grad():
        pooled = _pooled(source.detach(), target.detach())
        _, s = _kernel_matrix(
            pooled, len(source), lambda d2: _median_set(d2, n_kernels, multiplier), "auto"
        )
        return s


def _mmd_from_kernel(k: Tensor, n_s: int, unbiased: bool) -> Tensor:
    """MMD² from the pooled kernel matrix: sums over its source, target and cross blocks."""
    n_t = len(k) - n_s
    k_ss, k_tt, k_st = k[:n_s, :n_s], k[n_s:, n_s:], k[:n_s, n_s:]
    if unbiased:
        term_ss = (k_ss.sum() - k_ss.diagonal().sum()) / (n_s * (n_s - 1))
        term_tt = (k_tt.sum() - k_tt.diagonal().sum()) / (n_t * (n_t - 1))
    else:
        term_ss, term_tt = k_ss.mean(), k_tt.mean()
    return term_ss + term_tt - 2.0 * k_st.mean()


def _check_mmd_inputs(source: Tensor, target: Tensor, unbiased: bool) -> None:
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(
            "expected (n_s, d) and (n_t, d) inputs, "
            f"got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    min_n = 2 if unbiased else 1
    if len(source) < min_n or len(target) < min_n:
        raise ValueError(
            f"need at least {min_n} samples per domain, got n_s={len(source)}, n_t={len(target)}"
        )


def multi_kernel_mmd(
    source: Tensor,
    target: Tensor,
    variances: Sequence[float] | Tensor,
    unbiased: bool = True,
    distances: str = "auto",
) -> Tensor:
    """Squared MMD between (n_s, d) and (n_t, d) samples with k(x,y) = Σ_s exp(−‖x−y‖²/(2s)).

    Unbiased (paper Eq. 3; Gretton et al. 2012, Eq. 3):
        1/(n_s(n_s−1)) Σ_{i≠j} k(x_i,x_j) + 1/(n_t(n_t−1)) Σ_{i≠j} k(y_i,y_j)
        − 2/(n_s n_t) Σ_{i,j} k(x_i,y_j)
    Biased (V-statistic): the same with diagonals included and 1/n² normalisation.

    One kernel matrix of the pooled batch [source; target] feeds all three sums. Its squared
    distances come from ‖z_i‖² + ‖z_j‖² − 2 z_i·z_j of the mean-centred batch (one matrix
    multiply, negatives clamped to 0, diagonal exactly 0) unless that expansion's cancellation
    error could change some kernel value by more than 1e-4 relative (``distances="auto"``; see
    :func:`_kernel_matrix`): those pairs get direct differences, as the authors' 1e-6
    variances need for near-duplicate points. Computed in at least float32, outside autocast.

    The result is deliberately not clamped: the unbiased estimate can be slightly negative when
    the domains agree, and the authors' clamp at ≥ 1e-4 set the gradient to zero whenever the
    estimate was small, silently switching the transfer loss off.
    """
    _check_mmd_inputs(source, target, unbiased)
    with torch.autocast(source.device.type, enabled=False):
        pooled = _pooled(source, target)
        s = _as_variances(variances, pooled)
        k, _ = _kernel_matrix(pooled, len(source), lambda d2: s, distances)
        return _mmd_from_kernel(k, len(source), unbiased)


class MMDLoss(nn.Module):
    """Multi-kernel Gaussian MMD between flattened source and target features (paper Eq. 2-3).

    ``bandwidths="paper"`` uses :data:`PAPER_VARIANCES`; ``"median"`` uses
    :func:`median_variances` recomputed on every batch (no state is kept), taken from the same
    pooled distance matrix as the loss. ``distances`` as in :func:`multi_kernel_mmd`.
    """

    def __init__(
        self,
        bandwidths: str = "median",
        unbiased: bool = True,
        n_kernels: int = 5,
        multiplier: float = 2.0,
        distances: str = "auto",
    ) -> None:
        super().__init__()
        if bandwidths not in BANDWIDTH_MODES:
            raise ValueError(f"bandwidths must be one of {BANDWIDTH_MODES}, got {bandwidths!r}")
        if distances not in DISTANCE_MODES:
            raise ValueError(f"distances must be one of {DISTANCE_MODES}, got {distances!r}")
        self.bandwidths = bandwidths
        self.unbiased = unbiased
        self.n_kernels = n_kernels
        self.multiplier = multiplier
        self.distances = distances

    def variances(self, source: Tensor, target: Tensor) -> Sequence[float] | Tensor:
        """The kernel variances used for this pair of (flattened) batches."""
        if self.bandwidths == "paper":
            return PAPER_VARIANCES
        return median_variances(source, target, self.n_kernels, self.multiplier)

    def forward(self, source_features: Tensor, target_features: Tensor) -> Tensor:
        source = source_features.reshape(len(source_features), -1)
        target = target_features.reshape(len(target_features), -1)
        if self.bandwidths == "paper":
            return multi_kernel_mmd(source, target, PAPER_VARIANCES, self.unbiased, self.distances)
        _check_mmd_inputs(source, target, self.unbiased)
        _check_median_args(self.n_kernels, self.multiplier, len(source) + len(target))
        with torch.autocast(source.device.type, enabled=False):
            pooled = _pooled(source, target)
            k, _ = _kernel_matrix(
                pooled,
                len(source),
                lambda d2: _median_set(d2, self.n_kernels, self.multiplier),
                self.distances,
            )
            return _mmd_from_kernel(k, len(source), self.unbiased)

    def extra_repr(self) -> str:
        return (
            f"bandwidths={self.bandwidths!r}, unbiased={self.unbiased}, "
            f"n_kernels={self.n_kernels}, multiplier={self.multiplier}, "
            f"distances={self.distances!r}"
        )


# --------------------------------------------------------------------------- DANN


class GradientReversal(torch.autograd.Function):
    """Identity forward, −coefficient × gradient backward (Ganin & Lempitsky 2015; paper Eq. 4)."""

    @staticmethod
    def forward(ctx, x: Tensor, coefficient: float) -> Tensor:  # type: ignore[override]
        ctx.coefficient = float(coefficient)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.coefficient * grad_output, None


def grad_reverse(x: Tensor, coefficient: float) -> Tensor:
    """Apply :class:`GradientReversal` with the given coefficient."""
    return GradientReversal.apply(x, coefficient)


def ganin_coefficient(progress: float, gamma: float = 10.0, max_value: float = 1.0) -> float:
    """max_value · (2 / (1 + exp(−γ·p)) − 1), p = progress clipped to [0, 1].

    Ganin et al. 2016 (JMLR), §5.2.2: the coefficient ramps from 0 to max_value.
    """
    p = min(max(float(progress), 0.0), 1.0)
    return max_value * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def reversal_coefficient(schedule: str, progress: float, gamma: float, max_value: float) -> float:
    """Reversal coefficient: "constant" → max_value; "ganin" → :func:`ganin_coefficient`."""
    if schedule == "constant":
        return float(max_value)
    if schedule == "ganin":
        return ganin_coefficient(progress, gamma, max_value)
    raise ValueError(f"unknown reversal schedule {schedule!r}; options: {REVERSAL_SCHEDULES}")


def domain_adversarial_loss(
    domain_logits_source: Tensor, domain_logits_target: Tensor
) -> tuple[Tensor, Tensor]:
    """Domain-classifier loss of the paper's Eq. 4, source = 1, target = 0:

        L_d = 1/n_s Σ_s BCE(D(G(x_s)), 1) + 1/n_t Σ_t BCE(D(G(x_t)), 0)

    (a mean per domain, summed: each domain weighs the same whatever the batch sizes).
    Returns (loss, accuracy); accuracy (logit > 0 ↔ source) over all samples, detached.
    """
    source = domain_logits_source.reshape(-1)
    target = domain_logits_target.reshape(-1)
    loss = F.binary_cross_entropy_with_logits(
        source, torch.ones_like(source)
    ) + F.binary_cross_entropy_with_logits(target, torch.zeros_like(target))
    logits = torch.cat([source, target])
    labels = torch.cat([torch.ones_like(source), torch.zeros_like(target)])
    with torch.no_grad():
        accuracy = ((logits > 0).to(labels.dtype) == labels).to(logits.dtype).mean()
    return loss, accuracy.detach()


# --------------------------------------------------------------------------- DeepMerge II


class FisherLoss(nn.Module):
    """Fisher loss with learnable class centres (DeepMerge II, Ćiprijanović et al. 2021;
    Zhang et al. 2020, discriminative feature learning for domain adaptation).

    L = intra / (inter + ε), with
        intra = mean_i ‖f_i − c_{y_i}‖²                     (within-class scatter)
        inter = mean_{j≠k} ‖c_j − c_k‖²                    (between-class scatter)
    The between-class term uses all pairs of distinct centres rather than distances to a batch
    mean, so it does not depend on the batch's class balance. Apply it to source features only.
    """

    def __init__(self, feat_dim: int, n_classes: int = 2, eps: float = 1e-6) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"Fisher loss needs at least 2 classes, got {n_classes}")
        self.centers = nn.Parameter(torch.randn(n_classes, feat_dim))
        self.eps = eps

    def intra_class(self, features: Tensor, labels: Tensor) -> Tensor:
        """mean_i ‖f_i − c_{y_i}‖²."""
        return (features - self.centers[labels]).pow(2).sum(-1).mean()

    def inter_class(self) -> Tensor:
        """mean_{j≠k} ‖c_j − c_k‖²."""
        k = len(self.centers)
        d2 = (self.centers.unsqueeze(0) - self.centers.unsqueeze(1)).pow(2).sum(-1)
        return d2.sum() / (k * (k - 1))

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        features = features.reshape(len(features), -1)
        return self.intra_class(features, labels.long()) / (self.inter_class() + self.eps)


def entropy_loss(logits: Tensor) -> Tensor:
    """Mean Shannon entropy −Σ_c p_c log p_c of softmax(logits) (Grandvalet & Bengio 2005)."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


# --------------------------------------------------------------------------- CDAN, MCC, CORAL

#: Above this many multilinear-map entries (feature_dim × n_classes) CDAN uses the randomised map.
CDAN_RANDOMIZED_THRESHOLD = 4096


def _entropy(probs: Tensor) -> Tensor:
    """H(p) = −Σ_c p_c log p_c per row, with 0 · log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def entropy_weights(probs: Tensor) -> Tensor:
    """Per-sample certainty weights w_i = 1 + exp(−H(p_i)), H the Shannon entropy of row i.

    CDAN+E's entropy conditioning (Long et al. 2018, "Conditional Adversarial Domain Adaptation")
    and MCC's sample weighting (Jin et al. 2020, "Minimum Class Confusion"). A one-hot prediction
    weighs 2, a uniform one 1 + 1/C.
    """
    return 1.0 + torch.exp(-_entropy(probs))


def multilinear_map(features: Tensor, probs: Tensor) -> Tensor:
    """The flattened outer product f ⊗ g, shape (N, D·C), entry [i, d·C + c] = f_id · g_ic.

    CDAN's conditioning (Long et al. 2018): the discriminator sees the features jointly with the
    class probabilities, so it can align the class-conditional distributions.
    """
    features = features.reshape(len(features), -1)
    return (features.unsqueeze(2) * probs.unsqueeze(1)).reshape(len(features), -1)


class RandomizedMultilinearMap(nn.Module):
    """T(f, g) = (R_f f) ⊙ (R_g g) / √d, with fixed Gaussian R_f (d × D) and R_g (d × C).

    Long et al. 2018, randomised multilinear map: with N(0, 1) entries,
    E⟨T(f, g), T(f', g')⟩ = ⟨f ⊗ g, f' ⊗ g'⟩, so the d-dimensional output stands in for the
    D·C-dimensional outer product. The matrices are buffers: not trained, saved in checkpoints.
    Memory: (D + C)·d numbers (DeepMerge, D = 2,592, C = 2, d = 1,024: 2.66 M, 10.6 MB float32).
    """

    r_features: Tensor
    r_classes: Tensor

    def __init__(self, feature_dim: int, n_classes: int, output_dim: int = 1024) -> None:
        super().__init__()
        if min(feature_dim, n_classes, output_dim) < 1:
            raise ValueError("feature_dim, n_classes and output_dim must be positive")
        self.output_dim = int(output_dim)
        self.register_buffer("r_features", torch.randn(feature_dim, output_dim))
        self.register_buffer("r_classes", torch.randn(n_classes, output_dim))

    def forward(self, features: Tensor, probs: Tensor) -> Tensor:
        features = features.reshape(len(features), -1)
        projected_f = features @ self.r_features.to(features.dtype)
        projected_g = probs @ self.r_classes.to(probs.dtype)
        return projected_f * projected_g / math.sqrt(self.output_dim)


class ConditionalMap(nn.Module):
    """CDAN's discriminator input: f ⊗ g (:func:`multilinear_map`) when D·C ≤ ``threshold``,
    else the :class:`RandomizedMultilinearMap` of ``randomized_dim`` outputs (Long et al. 2018).

    ``output_dim`` is the width of what the discriminator reads.
    """

    def __init__(
        self,
        feature_dim: int,
        n_classes: int,
        threshold: int = CDAN_RANDOMIZED_THRESHOLD,
        randomized_dim: int = 1024,
    ) -> None:
        super().__init__()
        self.randomized = feature_dim * n_classes > threshold
        self.random_map = (
            RandomizedMultilinearMap(feature_dim, n_classes, randomized_dim)
            if self.randomized
            else None
        )
        self.output_dim = int(randomized_dim) if self.randomized else feature_dim * n_classes

    def forward(self, features: Tensor, probs: Tensor) -> Tensor:
        if self.random_map is not None:
            return self.random_map(features, probs)
        return multilinear_map(features, probs)

    def extra_repr(self) -> str:
        return f"randomized={self.randomized}, output_dim={self.output_dim}"


def weighted_domain_adversarial_loss(
    domain_logits_source: Tensor,
    domain_logits_target: Tensor,
    weights_source: Tensor | None = None,
    weights_target: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-domain weighted means of the discriminator's BCE, summed (source = 1, target = 0):

        L_d = Σ_s w_s BCE(d_s, 1) / Σ_s w_s + Σ_t w_t BCE(d_t, 0) / Σ_t w_t

    Weights are detached; each domain keeps its share of the loss whatever its weights' scale,
    and w ≡ 1 gives :func:`domain_adversarial_loss` (paper Eq. 4). With w = :func:`entropy_weights`
    this is CDAN+E's discriminator loss (Long et al. 2018). Returns (loss, unweighted domain
    accuracy over all samples, detached).
    """
    d_s, d_t = domain_logits_source.reshape(-1), domain_logits_target.reshape(-1)

    def weighted_mean(logits: Tensor, label: float, weights: Tensor | None) -> Tensor:
        per_sample = F.binary_cross_entropy_with_logits(
            logits, torch.full_like(logits, label), reduction="none"
        )
        if weights is None:
            return per_sample.mean()
        weights = weights.detach().reshape(-1).to(per_sample.dtype)
        return (weights * per_sample).sum() / weights.sum()

    loss = weighted_mean(d_s, 1.0, weights_source) + weighted_mean(d_t, 0.0, weights_target)
    with torch.no_grad():
        logits = torch.cat([d_s, d_t])
        labels = torch.cat([torch.ones_like(d_s), torch.zeros_like(d_t)])
        accuracy = ((logits > 0).to(labels.dtype) == labels).to(logits.dtype).mean()
    return loss, accuracy.detach()


def minimum_class_confusion(logits: Tensor, temperature: float = 2.5) -> Tensor:
    """Minimum class confusion loss on (N, C) target logits (Jin et al. 2020, ECCV).

        Ŷ = softmax(Z / T)                                   (temperature scaling)
        W_ii = N · (1 + exp(−H(Ŷ_i))) / Σ_j (1 + exp(−H(Ŷ_j)))   (entropy weights, detached)
        C = Ŷᵀ W Ŷ                                           (C × C class confusion)
        C̃_jk = C_jk / Σ_k' C_jk'                             (category normalisation)
        L = (Σ_jk C̃_jk − Σ_j C̃_jj) / C

    Computed in float32 (also under mixed precision).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probs = F.softmax(logits.float() / temperature, dim=-1)
        n, n_classes = probs.shape
        weights = entropy_weights(probs).detach()
        weights = weights * (n / weights.sum())
        confusion = probs.T @ (weights.unsqueeze(1) * probs)
        confusion = confusion / confusion.sum(dim=1, keepdim=True)
        return (confusion.sum() - confusion.trace()) / n_classes


def _covariance(x: Tensor) -> Tensor:
    """Unbiased covariance of the rows of (n, d) x: (x − x̄)ᵀ(x − x̄) / (n − 1)."""
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred / (len(x) - 1)


def coral_loss(source: Tensor, target: Tensor) -> Tensor:
    """Deep CORAL (Sun & Saenko 2016): ‖C_s − C_t‖²_F / (4 d²) between the unbiased covariances
    C = (XᵀX − (1ᵀX)ᵀ(1ᵀX) / n) / (n − 1) of (n_s, d) source and (n_t, d) target features.

    Inputs are flattened per sample; computed in float32 (also under mixed precision).
    """
    source = source.reshape(len(source), -1)
    target = target.reshape(len(target), -1)
    if source.shape[1] != target.shape[1]:
        raise ValueError(f"feature widths differ: {source.shape[1]} vs {target.shape[1]}")
    if len(source) < 2 or len(target) < 2:
        raise ValueError(f"need at least 2 samples per domain, got {len(source)}, {len(target)}")
    d = source.shape[1]
    with torch.autocast(device_type=source.device.type, enabled=False):
        diff = _covariance(source.float()) - _covariance(target.float())
        return diff.pow(2).sum() / (4.0 * d * d)


# --------------------------------------------------------------------------- self-training


def confident_pseudo_label_loss(logits: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Class-balanced cross-entropy on confident predictions with their own predicted labels.

        ŷ_i = argmax_c p_ic,   S_k = {i : ŷ_i = k and max_c p_ic > τ},   K = {k : S_k ≠ ∅}
        L = (1/|K|) Σ_{k∈K} (1/|S_k|) Σ_{i∈S_k} −log p_{i,ŷ_i}

    Pseudo-labelling (Lee 2013) with a confidence threshold τ (as in FixMatch, Sohn et al. 2020);
    pseudo-labels and the selection are detached. Each pseudo-class contributes equally, so a batch
    where one class dominates the confident predictions does not drag every image towards it.
    L = 0 (still attached to the graph) when nothing passes the threshold.

    Returns (loss, mask of confident samples, pseudo-labels).
    """
    with torch.no_grad():
        confidence, pseudo = F.softmax(logits.detach().float(), dim=-1).max(dim=-1)
        mask = confidence > threshold
    per_sample = F.cross_entropy(logits, pseudo, reduction="none")
    n_classes = logits.shape[-1]
    chosen = pseudo[mask]
    counts = torch.bincount(chosen, minlength=n_classes)
    sums = per_sample.new_zeros(n_classes).index_add(0, chosen, per_sample[mask])
    # the mean over the classes present, written without a branch (no host synchronisation):
    # 0, still attached to the graph, when no class is present
    present = (counts > 0).to(sums.dtype)
    class_means = sums / counts.clamp_min(1).to(sums.dtype)
    loss = (class_means * present).sum() / present.sum().clamp_min(1.0) + logits.sum() * 0.0
    return loss, mask, pseudo


__all__ += [
    "CDAN_RANDOMIZED_THRESHOLD",
    "ConditionalMap",
    "RandomizedMultilinearMap",
    "confident_pseudo_label_loss",
    "coral_loss",
    "entropy_weights",
    "minimum_class_confusion",
    "multilinear_map",
    "weighted_domain_adversarial_loss",
]
