"""After training: did the features mix the domains, and what does the network look at?

For each run folder (``results.json`` + checkpoint) :func:`diagnose_runs`

- rebuilds the model and the run's DataModule (same galaxy split, same normalisation),
- takes the feature-layer activations of the source and target **test** images,
- projects them to 2-D with UMAP (McInnes et al. 2018, arXiv:1802.03426) or t-SNE (van der Maaten &
  Hinton 2008), one column per run, coloured by domain and by class,
- trains a logistic-regression domain classifier on the features (held-out half of the galaxies):
  accuracy ≈ 1 means the domains stay apart, ≈ 0.5 that they mixed,
- draws integrated-gradients saliency maps (Sundararajan et al. 2017, ICML; captum) of the merger
  logit for a few mergers and non-mergers of each domain.

It writes ``latent_space.png/.pdf``, ``saliency.png/.pdf`` and ``runs_diagnostics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from galda.diagnose.stats import galaxy_halves
from galda.errors import GaldaError
from galda.results import (
    _jsonable,
    atomic_savefig,
    atomic_write_bytes,
    atomic_write_text,
    read_results,
)

log = logging.getLogger(__name__)

DOMAINS = ("source", "target")
JSON_NAME = "runs_diagnostics.json"
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def _checkpoint_path(run_dir: Path, results: dict[str, Any]) -> Path:
    recorded = results.get("checkpoint")
    candidates = []
    if recorded:
        candidates += [Path(recorded), run_dir / "checkpoints" / Path(recorded).name]
    candidates += sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))
    candidates += [run_dir / "checkpoints" / "last.ckpt"]
    for path in candidates:
        if path.is_file():
            return path
    looked = recorded or "checkpoints/*.ckpt"
    raise GaldaError(
        f"{run_dir}: no checkpoint found (looked for {looked}); "
        "give a run folder that holds its checkpoints/"
    )


def _run_config(run_dir: Path, results: dict[str, Any]) -> DictConfig:
    """The run's config: its ``.hydra/config.yaml``, else recomposed from its overrides."""
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file():
        loaded = OmegaConf.load(saved)
        assert isinstance(loaded, DictConfig)
        return loaded
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not CONF_DIR.is_dir():
        raise GaldaError(f"{saved}: not found, and no galda conf/ folder to recompose the config")
    GlobalHydra.instance().clear()
    overrides = [o for o in results.get("overrides") or [] if not o.startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def load_run_model(
    run_dir: str | Path, data_dir: str | Path | None = None
) -> tuple[torch.nn.Module, DictConfig, dict[str, Any]]:
    """Restore a run's LightningModule from its checkpoint (eval mode, on CPU).

    The one place that knows how a trained model is restored. Checkpoints that carry their network
    config (``hyper_parameters["net"]``) load with ``Cls.load_from_checkpoint(path)`` alone; older
    ones are rebuilt from the run's config and their state dict. Returns ``(module, cfg,
    results)``; ``cfg.paths.data_dir`` is set to ``data_dir`` when given.
    """
    from hydra.utils import get_class, instantiate

    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if results.get("status") != "complete":
        raise GaldaError(
            f"{run_dir / 'results.json'}: status is {results.get('status')!r}, not "
            "'complete'; diagnose finished runs only"
        )
    cfg = _run_config(run_dir, results)
    if data_dir is not None:
        OmegaConf.update(cfg, "paths.data_dir", str(data_dir), force_add=True)
    ckpt_path = _checkpoint_path(run_dir, results)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    cls: Any = get_class(cfg.method.module._target_)
    if isinstance(checkpoint.get("hyper_parameters", {}).get("net"), dict):
        module = cls.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=False)
    else:
        module = instantiate(cfg.method.module, net=instantiate(cfg.model.net))
        missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
        if missing:
            raise GaldaError(
                f"{ckpt_path}: checkpoint lacks {len(missing)} weights of the "
                f"configured model (first: {missing[0]}); is it from this run?"
            )
        if unexpected:
            log.warning("%s: ignoring %d unexpected weights", ckpt_path, len(unexpected))
    module.eval()
    results = {**results, "checkpoint_used": str(ckpt_path)}
    return module, cfg, results


@dataclass
class TestSet:
    """One domain's normalised test images, labels and galaxy ids (rows of the domain file)."""

    images: torch.Tensor
    labels: np.ndarray | None
    galaxy_id: np.ndarray
    rows: np.ndarray


def test_sets(cfg: DictConfig, run_dir: Path) -> dict[str, TestSet]:
    """The run's DataModule test splits (same files, split and normalisation as in training)."""
    from hydra.utils import instantiate

    from galda.provision import datamodule_config

    data_cfg = OmegaConf.to_container(datamodule_config(cfg.data), resolve=True)
    assert isinstance(data_cfg, dict)
    for domain in DOMAINS:
        path = Path(data_cfg[f"{domain}_path"])
        if not path.is_file():
            raise GaldaError(
                f"{path}: data file of run {run_dir} not found; pass --data-dir (the "
                "folder holding simulated/<preset>-seed<seed>/ or the run's data)"
            )
    data_cfg.update(on_device=False, num_workers=0, channels_last=False)
    dm = instantiate(data_cfg, _convert_="all")
    dm.setup("test")
    out = {}
    for domain in DOMAINS:
        ds = dm.datasets[domain]["test"]
        rows = ds.rows.numpy()
        labels = ds.labels.numpy() if ds.labels is not None else None
        out[domain] = TestSet(ds.images, labels, dm.galaxy_ids[domain][rows], rows)
    return out


@torch.no_grad()
def features_and_probs(
    module: torch.nn.Module, images: torch.Tensor, batch: int = 256, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Feature-layer activations (N, D) and P(merger) (N,) of the run's network."""
    net: Any = module.net
    net = net.to(device)
    feats, probs = [], []
    for start in range(0, len(images), batch):
        f, logits = net(images[start : start + batch].to(device))
        feats.append(f.float().cpu())
        probs.append(logits.float().softmax(1)[:, 1].cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def domain_classifier(
    features: dict[str, np.ndarray], galaxy_id: dict[str, np.ndarray], seed: int = 0
) -> dict[str, Any]:
    """Held-out accuracy of a logistic regression telling source from target features.

    Trained on one half of the galaxies (both domains), scored on the other half, so the paired
    views of one galaxy never sit on both sides.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ids = np.concatenate([galaxy_id[d] for d in DOMAINS])
    x = np.concatenate([features[d] for d in DOMAINS])
    y = np.concatenate([np.full(len(features[d]), i) for i, d in enumerate(DOMAINS)])
    train, test = galaxy_halves(ids, seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    clf.fit(x[train], y[train])
    acc = float(np.mean(clf.predict(x[test]) == y[test]))
    return {
        "heldout_accuracy": acc,
        "proxy_a_distance": float(np.clip(2 * (2 * acc - 1), 0, 2)),
        "n_train": len(train),
        "n_test": len(test),
        "classifier": "logistic regression (standardised features, C=1), split by galaxy",
    }


def project(features: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """2-D embedding of standardised features with UMAP or t-SNE (seeded)."""
    x = (features - features.mean(0)) / np.where(features.std(0) > 0, features.std(0), 1.0)
    if method == "umap":
        import umap

        neighbours = int(min(15, len(x) - 1))
        return umap.UMAP(n_neighbors=neighbours, min_dist=0.1, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (len(x) - 1) / 3))
        return TSNE(
            n_components=2, init="pca", perplexity=perplexity, random_state=seed
        ).fit_transform(x)
    raise GaldaError(f"--projection {method}: choose umap or tsne")


def pick_examples(sets: dict[str, TestSet], n: int, seed: int) -> dict[str, list[int]]:
    """Indices into each domain's test set: ``n`` mergers then ``n`` non-mergers.

    With paired domains (same galaxy ids in the same order) the target shows the same stamps.
    """
    rng = np.random.default_rng(seed)
    src = sets["source"]
    assert src.labels is not None
    chosen: dict[str, list[int]] = {"source": []}
    for cls in (1, 0):
        pool = np.flatnonzero(src.labels == cls)
        chosen["source"] += sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())
    tgt = sets["target"]
    if len(tgt.rows) == len(src.rows) and np.array_equal(tgt.galaxy_id, src.galaxy_id):
        chosen["target"] = list(chosen["source"])
    else:
        chosen["target"] = []
        for cls in (1, 0):
            pool = (
                np.flatnonzero(tgt.labels == cls)
                if tgt.labels is not None
                else np.arange(len(tgt.rows))
            )
            chosen["target"] += sorted(
                rng.choice(pool, size=min(n, len(pool)), replace=False).tolist()
            )
    return chosen


def saliency(module: torch.nn.Module, images: torch.Tensor, n_steps: int = 32) -> np.ndarray:
    """Integrated gradients of the merger logit, |attribution| summed over bands: (N, H, W).

    IG_i(x) = (x_i − x'_i) ∫₀¹ ∂F(x' + α (x − x'))/∂x_i dα with the all-zero baseline x' (the
    training-set mean image after normalisation), ``n_steps`` Riemann steps (captum).
    """
    from captum.attr import IntegratedGradients

    net: Any = module.net
    net = net.cpu().eval()

    def merger_logit(x: torch.Tensor) -> torch.Tensor:
        return net(x)[1]

    ig = IntegratedGradients(merger_logit)
    x = images.clone().float().requires_grad_(True)
    attr = ig.attribute(
        x, baselines=torch.zeros_like(x), target=1, n_steps=n_steps, internal_batch_size=64
    )
    return attr.detach().abs().sum(1).numpy()


def _label_at(labels: np.ndarray | None, i: int) -> int | None:
    return None if labels is None else int(labels[i])


def _labels_at(labels: np.ndarray | None, idx: list[int]) -> np.ndarray | None:
    return None if labels is None else labels[idx]


def _label(results: dict[str, Any], names: list[str]) -> str:
    base = f"{results.get('method')} ({results.get('model')}, seed {results.get('seed')})"
    return base if base not in names else f"{base} #{len(names)}"


def _run_record(
    run_dir: Path,
    results: dict[str, Any],
    sets: dict[str, TestSet],
    feats: dict[str, np.ndarray],
    probs: dict[str, np.ndarray],
    clf: dict[str, Any],
    examples: dict[str, list[int]],
) -> dict[str, Any]:
    """One run's entry in the JSON summary."""
    return {
        "run_dir": str(run_dir),
        "checkpoint": results["checkpoint_used"],
        "method": results.get("method"),
        "model": results.get("model"),
        "seed": results.get("seed"),
        "feature_dim": int(feats["source"].shape[1]),
        "n_test": {d: len(feats[d]) for d in DOMAINS},
        "test_accuracy_recorded": {d: results.get(f"test/{d}/acc") for d in DOMAINS},
        "test_accuracy_recomputed": {
            d: float(np.mean((probs[d] > 0.5) == sets[d].labels))
            for d in DOMAINS
            if sets[d].labels is not None
        },
        "domain_classifier": clf,
        "saliency_examples": {
            d: [
                {
                    "row": int(sets[d].rows[i]),
                    "label": _label_at(sets[d].labels, i),
                    "p_merger": float(probs[d][i]),
                }
                for i in examples[d]
            ]
            for d in DOMAINS
        },
    }


def _diagnose_run(
    run_dir: Path,
    names: list[str],
    seed: int,
    projection: str,
    n_examples: int,
    data_dir: str | Path | None,
    device: str,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One run's name (unique among ``names``), JSON entry and figure panel."""
    module, cfg, results = load_run_model(run_dir, data_dir)
    sets = test_sets(cfg, run_dir)
    feats, probs = {}, {}
    for d in DOMAINS:
        feats[d], probs[d] = features_and_probs(module, sets[d].images, device=device)
    clf = domain_classifier(feats, {d: sets[d].galaxy_id for d in DOMAINS}, seed)
    xy = project(np.concatenate([feats[d] for d in DOMAINS]), projection, seed)
    examples = pick_examples(sets, n_examples, seed)
    maps = {d: saliency(module, sets[d].images[examples[d]]) for d in DOMAINS}
    name = _label(results, names)
    record = _run_record(run_dir, results, sets, feats, probs, clf, examples)
    panel = {
        "name": name,
        "xy": xy,
        "n_source": len(feats["source"]),
        "labels": {d: sets[d].labels for d in DOMAINS},
        "clf": clf,
        "results": results,
        "images": {d: sets[d].images[examples[d]].numpy() for d in DOMAINS},
        "maps": maps,
        "examples": examples,
        "probs": probs,
        "example_labels": {d: _labels_at(sets[d].labels, examples[d]) for d in DOMAINS},
    }
    log.info("%s: domain-classifier accuracy on test features %.3f", name, clf["heldout_accuracy"])
    return name, record, panel


def diagnose_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    seed: int = 0,
    projection: str = "umap",
    n_examples: int = 2,
    data_dir: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Latent-space projections, domain classifiers and saliency maps for trained runs."""
    started = time.time()
    out = Path(out)
    per_run: dict[str, Any] = {}
    panels: list[dict[str, Any]] = []
    for run_dir in map(Path, run_dirs):
        name, record, panel = _diagnose_run(
            run_dir, list(per_run), seed, projection, n_examples, data_dir, device
        )
        per_run[name] = record
        panels.append(panel)
    summary = {
        "projection": projection,
        "seed": seed,
        "runs": per_run,
        "wall_time_s": round(time.time() - started, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / JSON_NAME, json.dumps(_jsonable(summary), indent=2) + "\n")
    _latent_figure(panels, projection, out)
    _saliency_figure(panels, out)
    return summary


def save_small_png(fig: Any, path: Path, dpi: int, colours: int = 128) -> None:
    """Save a PNG with a reduced palette (noisy saliency maps compress poorly), atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    small = io.BytesIO()
    Image.open(buf).convert("RGB").quantize(colors=colours).save(small, format="png", optimize=True)
    atomic_write_bytes(path, small.getvalue())


def _latent_figure(panels: list[dict[str, Any]], projection: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(panels)
    fig, axes = plt.subplots(2, k, figsize=(4.2 * k, 8.2), squeeze=False)
    for j, p in enumerate(panels):
        xy, ns = p["xy"], p["n_source"]
        parts = {"source": xy[:ns], "target": xy[ns:]}
        ax = axes[0, j]
        for d, colour in zip(DOMAINS, ("tab:blue", "tab:orange")):
            ax.scatter(
                parts[d][:, 0], parts[d][:, 1], s=4, alpha=0.5, c=colour, label=d, rasterized=True
            )
        res = p["results"]
        acc_t = res.get("test/target/acc")
        ax.set_title(
            f"{p['name']}\ndomain clf acc {p['clf']['heldout_accuracy']:.2f}"
            + (f", target acc {acc_t:.2f}" if acc_t is not None else ""),
            fontsize=9,
        )
        ax.legend(markerscale=3, fontsize=8)
        ax = axes[1, j]
        for d, marker in zip(DOMAINS, ("o", "^")):
            labels = p["labels"][d]
            if labels is None:
                continue
            for cls, colour, name in ((0, "tab:green", "non-merger"), (1, "tab:purple", "merger")):
                sel = labels == cls
                ax.scatter(
                    parts[d][sel, 0],
                    parts[d][sel, 1],
                    s=4,
                    alpha=0.5,
                    c=colour,
                    marker=marker,
                    label=f"{d} {name}",
                    rasterized=True,
                )
        ax.set_title("coloured by class (o source, ^ target)", fontsize=9)
        ax.legend(markerscale=3, fontsize=7)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Test-set features, {projection.upper()}", fontsize=11)
    fig.tight_layout()
    atomic_savefig(fig, out / "latent_space.png", dpi=90)
    atomic_savefig(fig, out / "latent_space.pdf")
    plt.close(fig)


def _saliency_figure(panels: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = panels[0]
    columns = [(d, i) for d in DOMAINS for i in range(len(first["examples"][d]))]
    n_rows = 1 + len(panels)
    fig, axes = plt.subplots(
        n_rows, len(columns), figsize=(1.6 * len(columns), 1.75 * n_rows), squeeze=False
    )
    for c, (d, i) in enumerate(columns):
        image = first["images"][d][i][-1]  # the reddest band (normalised)
        axes[0, c].imshow(np.arcsinh(image - np.median(image)), cmap="gray", origin="lower")
        lab = first["example_labels"][d]
        kind = "" if lab is None else ("merger" if lab[i] == 1 else "non-merger")
        axes[0, c].set_title(f"{d}\n{kind}", fontsize=7)
        for r, p in enumerate(panels, start=1):
            m = p["maps"][d][i]
            axes[r, c].imshow(
                m / max(np.percentile(m, 99.5), 1e-12),
                cmap="inferno",
                vmin=0,
                vmax=1,
                origin="lower",
            )
            prob = p["probs"][d][p["examples"][d][i]]
            axes[r, c].set_title(f"p(merger) {prob:.2f}", fontsize=7)
            if c == 0:
                axes[r, c].set_ylabel(p["results"].get("method"), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("last band", fontsize=8)
    fig.suptitle(
        "Integrated gradients of the merger logit (|attribution| summed over bands)", fontsize=9
    )
    fig.tight_layout()
    save_small_png(fig, out / "saliency.png", dpi=75, colours=128)
    atomic_savefig(fig, out / "saliency.pdf")
    plt.close(fig)
