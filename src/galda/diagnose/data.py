"""Before training: how different are the two domain files, and in what?

:func:`diagnose_data` reads ``source.h5`` and ``target.h5`` and measures, per band and domain, the
pixel and total-flux distributions, the radial power spectrum and the noise at the stamp border;
then a kernel two-sample (MMD) permutation test and a proxy A-distance on a fixed pixel-space
embedding, for source vs target and, as controls, for two halves of each domain (disjoint galaxies).
It writes ``data_diagnostics.json`` and one figure page (``data_diagnostics.png`` / ``.pdf``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from galda.data.h5format import DataFormatError, DomainData, read_domain
from galda.diagnose import stats
from galda.errors import GaldaError
from galda.results import _jsonable, atomic_savefig, atomic_write_text

log = logging.getLogger(__name__)

DOMAINS = ("source", "target")
COLOURS = {"source": "tab:blue", "target": "tab:orange"}
JSON_NAME = "data_diagnostics.json"
FIGURE_NAME = "data_diagnostics"


def resolve_domain_paths(
    data: str | Path | None, source: str | Path | None = None, target: str | Path | None = None
) -> tuple[Path, Path]:
    """``DATA`` (a folder with source.h5 and target.h5) or ``--source``/``--target`` files."""
    if source is not None or target is not None:
        if source is None or target is None:
            raise GaldaError(
                "give both --source and --target (or a DATA folder holding both files)"
            )
        return Path(source), Path(target)
    if data is None:
        raise GaldaError(
            "give a DATA folder with source.h5 and target.h5, or --source and --target"
        )
    folder = Path(data)
    for name in ("source.h5", "target.h5"):
        if not (folder / name).is_file():
            raise GaldaError(
                f"{folder / name}: not found; DATA must be a folder holding source.h5 and "
                "target.h5 "
                "(or pass --source FILE --target FILE)"
            )
    return folder / "source.h5", folder / "target.h5"


def _read(path: Path) -> DomainData:
    try:
        return read_domain(path)
    except DataFormatError as err:
        raise GaldaError(str(err)) from err


def _subsample(n: int, n_max: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=n_max, replace=False)) if n > n_max else np.arange(n)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    q = np.percentile(values, [1, 16, 50, 84, 99])
    return {"p01": q[0], "p16": q[1], "p50": q[2], "p84": q[3], "p99": q[4]}


def _read_pair(
    source_path: str | Path, target_path: str | Path
) -> tuple[dict[str, DomainData], list[str]]:
    """Both domain files (same image shape required) and the band names."""
    data = {"source": _read(Path(source_path)), "target": _read(Path(target_path))}
    shapes = {d: data[d].images.shape[1:] for d in DOMAINS}
    if shapes["source"] != shapes["target"]:
        raise GaldaError(
            f"{target_path}: image shape {tuple(shapes['target'])} differs from the source's "
            f"{tuple(shapes['source'])}; both domains must have the same (C, H, W)"
        )
    n_bands = shapes["source"][0]
    bands = data["source"].attrs.get("band_names") or [f"band{b}" for b in range(n_bands)]
    return data, [str(b) for b in bands][:n_bands]


def _band_entry(
    b: int,
    data: dict[str, DomainData],
    sub: dict[str, np.ndarray],
    flux: dict[str, np.ndarray],
    noise: dict[str, dict[str, np.ndarray]],
    spectra: dict[str, tuple[np.ndarray, np.ndarray]],
    scale: float,
) -> dict[str, Any]:
    """Band ``b``'s noise, pixel and flux distributions and power spectrum, per domain."""
    entry: dict[str, Any] = {"asinh_scale": float(scale)}
    for d in DOMAINS:
        header = data[d].attrs.get("noise_sigma")
        entry[d] = {
            "noise_mad_std": float(np.median(noise[d]["mad_std"][:, b])),
            "noise_clipped_std": float(np.median(noise[d]["clipped_std"][:, b])),
            "noise_header": (
                float(header[b]) if isinstance(header, list) and len(header) > b else None
            ),
            "pixel_std": float(sub[d][:, b].std()),
            "pixel_quantiles": _quantiles(sub[d][:, b].ravel()),
            "flux_quantiles": _quantiles(flux[d][:, b]),
            "flux_nonpositive_fraction": float(np.mean(flux[d][:, b] <= 0)),
        }
    k, ps = spectra["source"][0], {d: spectra[d][1][b] for d in DOMAINS}
    entry["power_spectrum"] = {
        "k_cycles_per_pixel": k.tolist(),
        **{d: ps[d].tolist() for d in DOMAINS},
    }
    return entry


def _two_sample_tests(
    data: dict[str, DomainData],
    emb: dict[str, np.ndarray],
    seed: int,
    rng: np.random.Generator,
    n_permutations: int,
    max_per_group: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """MMD test and proxy A-distance: source vs target and each domain's two halves.

    Groups hold disjoint galaxies: source from one half of the galaxies, target from the other,
    so the paired images of one galaxy never sit on both sides. Returns the results and the MMD
    permutation nulls.
    """
    halves = {d: stats.galaxy_halves(data[d].galaxy_id, seed) for d in DOMAINS}
    groups = {
        "source_vs_target": (("source", 0), ("target", 1)),
        "source_half_vs_half": (("source", 0), ("source", 1)),
        "target_half_vs_half": (("target", 0), ("target", 1)),
    }
    tests: dict[str, Any] = {}
    nulls: dict[str, np.ndarray] = {}
    for i, (name, ((da, ha), (db, hb))) in enumerate(groups.items()):
        ia = halves[da][ha]
        ib = halves[db][hb]
        ia = ia[_subsample(len(ia), max_per_group, rng)]
        ib = ib[_subsample(len(ib), max_per_group, rng)]
        mmd = stats.mmd_permutation_test(emb[da][ia], emb[db][ib], n_permutations, seed=seed + i)
        a_dist = stats.proxy_a_distance(
            emb[da][ia], emb[db][ib], data[da].galaxy_id[ia], data[db].galaxy_id[ib], seed=seed + i
        )
        tests[name] = {"mmd": mmd.as_dict(), "proxy_a_distance": a_dist}
        nulls[name] = mmd.null
        log.info(
            "%s: MMD² = %.4g, p = %.4g; A-distance %.3f",
            name,
            mmd.mmd2,
            mmd.p_value,
            a_dist["a_distance"],
        )
    return tests, nulls


def diagnose_data(
    source_path: str | Path,
    target_path: str | Path,
    out: str | Path,
    seed: int = 0,
    n_permutations: int = 1000,
    max_per_group: int = 1000,
    max_images: int = 1000,
    factor: int = 5,
) -> dict[str, Any]:
    """Measure the domain shift between two domain files; write the JSON and the figure.

    Args:
        seed: seeds the galaxy halves, the subsamples and the permutations.
        n_permutations: permutations of the MMD test (the smallest attainable p is 1/(1+P)).
        max_per_group: images per group in the MMD test and the domain classifier.
        max_images: images per domain for the histograms and power spectra.
        factor: block size of the pixel embedding (see :func:`stats.pixel_embedding`).
    """
    started = time.time()
    out = Path(out)
    data, bands = _read_pair(source_path, target_path)
    rng = np.random.default_rng(seed)

    # Per-band distributions on a subsample of each domain.
    sub = {d: data[d].images[_subsample(len(data[d]), max_images, rng)] for d in DOMAINS}
    scales = stats.asinh_scales(np.concatenate([sub["source"], sub["target"]]))
    noise = {d: stats.border_noise(sub[d]) for d in DOMAINS}
    flux = {d: data[d].images.sum(axis=(2, 3), dtype=np.float64) for d in DOMAINS}  # (N, C)
    spectra = {d: stats.radial_power_spectrum(sub[d]) for d in DOMAINS}
    per_band = {
        band: _band_entry(b, data, sub, flux, noise, spectra, scales[b])
        for b, band in enumerate(bands)
    }
    emb = {d: stats.pixel_embedding(data[d].images, scales, factor) for d in DOMAINS}
    tests, nulls = _two_sample_tests(data, emb, seed, rng, n_permutations, max_per_group)
    result = {
        "source": str(source_path),
        "target": str(target_path),
        "n_images": {d: len(data[d]) for d in DOMAINS},
        "image_shape": list(data["source"].images.shape[1:]),
        "bands": bands,
        "seed": seed,
        "embedding": {
            "description": f"asinh(x / s_b) per band, then {factor}x{factor} block means "
            "(centre crop to a multiple); s_b = per-band asinh_scale",
            "dimension": int(emb["source"].shape[1]),
            "kernel": "Gaussian, sigma = median pairwise distance of the pooled sample",
        },
        "per_band": per_band,
        "tests": tests,
        "wall_time_s": round(time.time() - started, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / JSON_NAME, json.dumps(_jsonable(result), indent=2) + "\n")
    _figure(result, sub, flux, scales, nulls, out)
    return result


def _pixel_panel(ax: Any, sub: dict[str, np.ndarray], b: int, band: str, s: float) -> None:
    """Histograms of asinh-stretched pixel values of band ``b``, per domain."""
    stretched = {d: np.arcsinh(sub[d][:, b].ravel() / s) for d in DOMAINS}
    lo = min(np.percentile(v, 0.01) for v in stretched.values())
    hi = max(v.max() for v in stretched.values())
    edges = np.linspace(lo, hi, 81)
    for d in DOMAINS:
        ax.hist(
            stretched[d],
            bins=edges,
            histtype="step",
            color=COLOURS[d],
            label=d,
            density=True,
            log=True,
        )
    ax.set_title(f"{band}: pixel values")
    ax.set_xlabel(f"asinh(pixel / {s:.3g})")
    ax.legend(fontsize=8)


def _flux_panel(
    ax: Any, flux: dict[str, np.ndarray], entry: dict[str, Any], b: int, band: str
) -> None:
    """Histograms of log10 stamp flux of band ``b`` (positive fluxes; the rest counted)."""
    positive = {d: flux[d][:, b][flux[d][:, b] > 0] for d in DOMAINS}
    logflux = {d: np.log10(v) for d, v in positive.items() if len(v)}
    if logflux:
        edges = np.linspace(
            min(np.percentile(v, 0.5) for v in logflux.values()),
            max(v.max() for v in logflux.values()),
            41,
        )
        for d, v in logflux.items():
            ax.hist(v, bins=edges, histtype="step", color=COLOURS[d], label=d)
    nonpos = ", ".join(f"{d} {100 * entry[d]['flux_nonpositive_fraction']:.1f}%" for d in DOMAINS)
    ax.set_title(f"{band}: stamp flux (sum)")
    ax.set_xlabel(f"log10 flux [file units]  (≤ 0: {nonpos})", fontsize=8)


def _spectrum_panel(ax: Any, ps: dict[str, Any], band: str) -> None:
    import matplotlib.ticker

    for d in DOMAINS:
        ax.loglog(ps["k_cycles_per_pixel"], np.clip(ps[d], 1e-30, None), color=COLOURS[d], label=d)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(f"{band}: radial power spectrum")
    ax.set_xlabel("k [cycles / pixel]")
    ax.set_ylabel("P(k)")


def _noise_panel(ax: Any, result: dict[str, Any]) -> None:
    """Border-noise estimate per band and domain, with the file header's sigma if given."""
    bands = result["bands"]
    x = np.arange(len(bands))
    for i, d in enumerate(DOMAINS):
        vals = [result["per_band"][band][d]["noise_mad_std"] for band in bands]
        ax.bar(x + (i - 0.5) * 0.38, vals, width=0.38, color=COLOURS[d], label=f"{d} (border MAD)")
        header = [result["per_band"][band][d]["noise_header"] for band in bands]
        if all(h is not None for h in header):
            ax.scatter(
                x + (i - 0.5) * 0.38,
                header,
                marker="_",
                s=300,
                color="k",
                label="file header" if i == 0 else None,
                zorder=3,
            )
    ax.set_xticks(x, bands)
    ax.set_title("noise per band")
    ax.set_ylabel("σ [file units / pixel]")
    ax.legend(fontsize=7)


def _nulls_panel(ax: Any, result: dict[str, Any], nulls: dict[str, np.ndarray]) -> None:
    for name, colour in zip(nulls, ("tab:red", "tab:blue", "tab:orange")):
        t = result["tests"][name]["mmd"]
        ax.hist(nulls[name], bins=40, histtype="step", color=colour, label=name.replace("_", " "))
        ax.axvline(t["mmd2_unbiased"], color=colour, ls="--")
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_title("MMD²: permutation nulls, observed dashed")
    ax.legend(fontsize=7)


def _tests_text(ax: Any, result: dict[str, Any]) -> None:
    ax.axis("off")
    lines = ["Two-sample tests (disjoint galaxies)", ""]
    for name, t in result["tests"].items():
        lines.append(f"{name}:")
        lines.append(
            f"  MMD² = {t['mmd']['mmd2_unbiased']:.3g},  p = {t['mmd']['p_value']:.3g}"
            f"  (n = {t['mmd']['n_x']}+{t['mmd']['n_y']})"
        )
        a = t["proxy_a_distance"]
        lines.append(
            f"  domain clf acc = {a['heldout_accuracy']:.3f},  d_A = {a['a_distance']:.2f}"
        )
    lines += ["", f"embedding: {result['embedding']['dimension']}-d asinh block means"]
    ax.text(
        0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=8, transform=ax.transAxes
    )


def _figure(
    result: dict[str, Any],
    sub: dict[str, np.ndarray],
    flux: dict[str, np.ndarray],
    scales: np.ndarray,
    nulls: dict[str, np.ndarray],
    out: Path,
) -> None:
    """One column per band (pixels, flux, power spectrum), then noise, MMD nulls and test text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = result["bands"]
    nb = len(bands)
    fig, axes = plt.subplots(4, max(nb, 3), figsize=(3.6 * max(nb, 3), 12.5), squeeze=False)
    for b, band in enumerate(bands):
        _pixel_panel(axes[0, b], sub, b, band, scales[b])
        _flux_panel(axes[1, b], flux, result["per_band"][band], b, band)
        _spectrum_panel(axes[2, b], result["per_band"][band]["power_spectrum"], band)
    _noise_panel(axes[3, 0], result)
    _nulls_panel(axes[3, 1], result, nulls)
    _tests_text(axes[3, 2], result)
    for extra in axes[:3, nb:].ravel():
        extra.axis("off")
    fig.suptitle(f"Domain shift: {result['source']}  vs  {result['target']}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, out / f"{FIGURE_NAME}.png", dpi=90)
    atomic_savefig(fig, out / f"{FIGURE_NAME}.pdf")
    plt.close(fig)
