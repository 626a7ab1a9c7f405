"""The paper's published numbers: Ćiprijanović et al. 2020 (arXiv:2011.03591).

Test accuracy in percent. ``TABLE1`` is the paper's Table 1 (one training run per cell);
``TEN_SEEDS_DEEPMERGE`` are the 10-seed means ± std the authors give for DeepMerge;
``DEEPMERGE_I`` is the earlier within-domain reference (no adaptation, trained and tested in one
domain) — a "trained on the target" reference, not a row of Table 1.
"""

from __future__ import annotations

CITATION = "Ćiprijanović et al. 2020 (arXiv:2011.03591)"

#: TABLE1[method][(domain, model)] -> accuracy (%)
TABLE1: dict[str, dict[tuple[str, str], float]] = {
    "baseline": {
        ("source", "deepmerge"): 84.8,
        ("source", "resnet18"): 81.1,
        ("target", "deepmerge"): 52.0,
        ("target", "resnet18"): 60.5,
    },
    "mmd": {
        ("source", "deepmerge"): 86.9,
        ("source", "resnet18"): 90.4,
        ("target", "deepmerge"): 76.6,
        ("target", "resnet18"): 73.8,
    },
    "dann": {
        ("source", "deepmerge"): 87.4,
        ("source", "resnet18"): 92.3,
        ("target", "deepmerge"): 78.6,
        ("target", "resnet18"): 71.6,
    },
}

#: TEN_SEEDS_DEEPMERGE[method][domain] -> (mean %, std %) over 10 seeds, DeepMerge only
TEN_SEEDS_DEEPMERGE: dict[str, dict[str, tuple[float, float]]] = {
    "baseline": {"source": (83.6, 0.7), "target": (57.0, 5.2)},
    "mmd": {"source": (86.6, 1.3), "target": (77.3, 0.6)},
    "dann": {"source": (86.5, 0.9), "target": (78.9, 0.5)},
}

#: DeepMerge I (Ćiprijanović et al. 2020a), trained and tested within one domain
DEEPMERGE_I: dict[str, dict[str, float]] = {
    "pristine": {"acc": 79.3, "auroc": 0.865},
    "noisy": {"acc": 75.6, "auroc": 0.820},
}


def table1(method: str, domain: str, model: str) -> float | None:
    """The paper's Table 1 accuracy (%) for one cell, or None when the paper has no such cell."""
    return TABLE1.get(method, {}).get((domain, model))


def ten_seeds(method: str, domain: str, model: str) -> tuple[float, float] | None:
    """The paper's 10-seed (mean, std) in % (DeepMerge only), or None."""
    if model != "deepmerge":
        return None
    return TEN_SEEDS_DEEPMERGE.get(method, {}).get(domain)
