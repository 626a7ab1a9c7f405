"""The classical row: Gini, M20 and asymmetry with statmorph, then a logistic regression.

Non-parametric merger diagnostics (Lotz, Primack & Madau 2004, AJ 128, 163; Lotz et al. 2008,
MNRAS 391, 1137; Conselice 2003, ApJS 147, 1), measured with statmorph (Rodriguez-Gomez et al.
2019, MNRAS 483, 4140) on the reddest band (the last channel: F160W in the simulator's
F814W / F356W / F160W order):

- Gini  G = Σ_i (2i − n − 1) |X_i| / ((n − 1) Σ_i |X_i|), pixels X sorted by value, over the
  Petrosian "Gini segmap";
- M20   = log10(Σ_{brightest 20 % of the flux} f_i r_i² / Σ_all f_i r_i²), r from the flux centroid;
- A     = Σ |I − I_180| / Σ |I| − background term, at the centre that minimises it.

The segmentation map comes from photutils: ``detect_sources`` at median + 2 σ_eff, where σ_eff is
the 3σ-clipped standard deviation of the stamp, floored at 0.5 % of its peak so that noiseless
(pristine) stamps get a finite threshold; the segment under the stamp centre (else the one nearest
to it) is kept. A stamp *fails* when nothing is detected, statmorph raises, returns flag > 1 or a
non-finite value; failures are counted (``measured_fraction``) and get the source-training medians.

A logistic regression on the standardised (G, M20, A) is fitted on the measured stamps of the source
**training** split (the DataModule's galaxy split), and scored on the source and target test splits.
The measurements are cached per domain file in an ``.npz`` keyed by the SHA-256 of the measured
band.

Command line: ``python -m galda.classical DATA --out RUN_DIR`` writes ``RUN_DIR/results.json``
(the training runs' schema, ``model="classical"``, ``method="gini_m20_a"``) and
``predictions.npz``. Exit status: 0 ok, 2 bad input, 1 unexpected.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galda import results as res
from galda.data.datamodule import split_galaxies
from galda.data.h5format import DataFormatError, DomainData, read_domain
from galda.errors import GaldaError
from galda.metrics import binary_confusion, binary_metrics

log = logging.getLogger(__name__)

FEATURES = ("gini", "m20", "asymmetry")
MODEL_NAME = "classical"
METHOD_NAME = "gini_m20_a"
#: bump when the measurement changes, so old caches are not reused
MEASUREMENT_VERSION = 1
SETTINGS: dict[str, Any] = {
    "threshold_nsigma": 2.0,
    "sigma_floor_of_peak": 0.005,
    "min_pixels": 5,
    "version": MEASUREMENT_VERSION,
}


# -- one stamp --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _morphology_class() -> type:
    """A statmorph ``SourceMorphology`` that evaluates only G, M20, A and the sky statistics.

    statmorph computes every statistic (with a Sérsic fit) in its constructor; we need three, so
    the subclass narrows its ``_calculate_morphology`` step (≈ 3× faster). Every flag those three
    set is kept (and remembered before statmorph's sky test); the Gini–MID segmap comparison, which
    needs the skipped MID statistics, is not made.
    """
    from statmorph.statmorph import SourceMorphology

    class _GiniM20Asymmetry(SourceMorphology):
        def _calculate_morphology(self) -> None:
            for name in (*FEATURES, "sky_mean", "sky_sigma"):
                _ = self[name]
            self.flag_before_sky_test = int(self.flag)

        def _check_segmaps(self) -> None:
            return None

    return _GiniM20Asymmetry


def segment_central(
    image: np.ndarray, nsigma: float = 2.0, floor: float = 0.005, min_pixels: int = 5
) -> tuple[np.ndarray | None, float, float]:
    """Background-subtract, detect sources and keep the central one.

    Returns ``(segmap, background, sigma_eff)``; ``segmap`` is a 0/1 int array or ``None`` when
    nothing is detected above median + ``nsigma`` · σ_eff.
    """
    from astropy.stats import sigma_clipped_stats
    from photutils.segmentation import detect_sources

    _, median, std = sigma_clipped_stats(image, sigma=3.0)
    sigma = max(float(std), floor * float(np.max(image) - median), 1e-12)
    seg = detect_sources(image - median, nsigma * sigma, n_pixels=min_pixels)
    if seg is None:
        return None, float(median), sigma
    h, w = image.shape
    label = int(seg.data[h // 2, w // 2])
    if label == 0:
        yy, xx = np.mgrid[:h, :w]
        labels = seg.labels
        dist = [
            np.hypot(yy[seg.data == k].mean() - h // 2, xx[seg.data == k].mean() - w // 2)
            for k in labels
        ]
        label = int(labels[int(np.argmin(dist))])
    return (seg.data == label).astype(np.int32), float(median), sigma


def measure_stamp(image: np.ndarray) -> tuple[float, float, float, int]:
    """(Gini, M20, A, flag) of one 2-D stamp; flag −1 = nothing detected, 5 = statmorph raised.

    statmorph's flags: 0 good, 1 suspect, 2 bad, 4 catastrophic. A noiseless stamp has sky σ ≈ 0,
    so statmorph's "not background-subtracted" test (|sky mean| > sky σ) trips on the faint wings
    of the galaxy; when that is the only problem and |sky mean| ≤ σ_eff, it counts as suspect (1).
    """
    image = np.asarray(image, np.float64)
    segmap, background, sigma = segment_central(
        image, SETTINGS["threshold_nsigma"], SETTINGS["sigma_floor_of_peak"], SETTINGS["min_pixels"]
    )
    if segmap is None:
        return np.nan, np.nan, np.nan, -1
    cls = _morphology_class()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # statmorph warns per stamp; the flag says it all
            morph = cls(image - background, segmap, 1, weightmap=np.full_like(image, sigma))
    except Exception:  # noqa: BLE001 - statmorph raises assorted errors on odd stamps
        return np.nan, np.nan, np.nan, 5
    flag = int(morph.flag)
    before = getattr(morph, "flag_before_sky_test", None)
    if (
        before is not None
        and abs(float(morph.sky_mean)) > float(morph.sky_sigma)
        and abs(float(morph.sky_mean)) <= sigma
    ):
        flag = max(before, 1)  # the sky test alone failed, on a (near-)noiseless stamp
    values = [float(getattr(morph, f)) for f in FEATURES]
    if any(not np.isfinite(v) or v == -99.0 for v in values):
        return np.nan, np.nan, np.nan, max(flag, 2)
    return values[0], values[1], values[2], flag


def _measure_block(images: np.ndarray) -> np.ndarray:
    """(n, 4) rows of (G, M20, A, flag) for a block of stamps (one joblib task)."""
    return np.array([measure_stamp(img) for img in images], dtype=np.float64)


def measure_images(
    images: np.ndarray, n_jobs: int = 1, progress: bool = True, block: int = 32
) -> dict[str, np.ndarray]:
    """Measure every 2-D stamp of ``images`` (N, H, W) in parallel (joblib processes).

    Returns ``{"gini", "m20", "asymmetry", "flag", "measured"}``; unmeasured rows are NaN.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    starts = range(0, len(images), block)
    parallel = Parallel(n_jobs=n_jobs, return_as="generator")
    jobs = (delayed(_measure_block)(images[s : s + block]) for s in starts)
    rows = []
    with tqdm(total=len(images), desc="statmorph", unit="stamp", disable=not progress) as bar:
        for out in parallel(jobs):
            rows.append(out)
            bar.update(len(out))
    table = np.concatenate(rows) if rows else np.empty((0, 4))
    flag = table[:, 3].astype(np.int64)
    measured = (flag >= 0) & (flag <= 1) & np.isfinite(table[:, :3]).all(axis=1)
    return {
        "gini": table[:, 0],
        "m20": table[:, 1],
        "asymmetry": table[:, 2],
        "flag": flag,
        "measured": measured,
    }


# -- cache ------------------------------------------------------------------------------------
def _band_hash(band_images: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(band_images, dtype=np.float32).tobytes())
    digest.update(json.dumps(SETTINGS, sort_keys=True).encode())
    return digest.hexdigest()


def _cache_dir(data_path: Path, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    beside = data_path.parent
    return beside if os.access(beside, os.W_OK) else Path("outputs") / "cache" / "classical"


def measure_domain(
    data: DomainData,
    band: int = -1,
    n_jobs: int = 1,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Measurements of one domain's ``band`` (cached); returns ``(arrays, info)``."""
    assert data.path is not None
    n_bands = data.images.shape[1]
    band = band % n_bands
    stamps = data.images[:, band]
    key = _band_hash(stamps)
    folder = _cache_dir(data.path, cache_dir)
    cache = folder / f".classical-{data.path.stem}-{key[:16]}.npz"
    info: dict[str, Any] = {"cache": str(cache), "band_index": band, "content_sha256": key}
    if cache.is_file():
        with np.load(cache) as f:
            arrays = {k: f[k] for k in (*FEATURES, "flag", "measured")}
            info["measure_time_s"] = float(f["measure_time_s"])
        if len(arrays["flag"]) == len(stamps):
            info["cached"] = True
            log.info("%s: using cached measurements %s", data.path, cache)
            return arrays, info
    started = time.time()
    arrays = measure_images(stamps, n_jobs=n_jobs, progress=progress)
    elapsed = time.time() - started
    info.update(cached=False, measure_time_s=elapsed)
    log.info("%s: measured %d stamps in %.1f s (%d jobs)", data.path, len(stamps), elapsed, n_jobs)
    buf = io.BytesIO()
    np.savez_compressed(buf, measure_time_s=elapsed, **arrays)  # type: ignore[arg-type]
    try:
        res.atomic_write_bytes(cache, buf.getvalue())
    except OSError as err:  # a read-only data folder must not lose the measurement
        log.warning("could not write the cache %s (%s)", cache, err)
    return arrays, info


# -- the classifier ---------------------------------------------------------------------------
def datamodule_split(
    data: dict[str, DomainData], split_seed: int, split_fractions: Sequence[float]
) -> dict[str, np.ndarray]:
    """Galaxy ids per split, drawn as ``DomainAdaptationDataModule.setup`` draws them.

    Stratified by the source labels only (target galaxies count as unlabelled), over the sorted
    ids of both domains; ``tests/test_classical.py`` checks that the two agree.
    """
    ids = np.concatenate([data[d].galaxy_id for d in ("source", "target")])
    source_labels = data["source"].labels
    assert source_labels is not None
    classes = np.concatenate([source_labels, np.full(len(data["target"].galaxy_id), -1)])
    order = np.argsort(ids, kind="stable")
    return split_galaxies(ids[order], split_fractions, split_seed, classes[order])


def _matrix(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([arrays[f] for f in FEATURES], axis=1)


def _score_domain(
    out: dict[str, Any],
    domain: str,
    dd: DomainData,
    x: np.ndarray,
    ok: np.ndarray,
    test: np.ndarray,
    clf: Any,
) -> None:
    """Test metrics, confusion and predictions of one labelled domain's test split, into ``out``."""
    assert dd.labels is not None
    probs = clf.predict_proba(x[test])[:, 1]
    for name, value in binary_metrics(probs, dd.labels[test]).items():
        out[f"test/{domain}/{name}"] = value
    out["confusion"][domain] = binary_confusion(probs, dd.labels[test])
    rows = np.flatnonzero(test)
    out["predictions"].update(
        {
            f"{domain}_probs": probs.astype(np.float32),
            f"{domain}_labels": dd.labels[test].astype(np.int64),
            f"{domain}_index": rows.astype(np.int64),
            f"{domain}_galaxy_id": dd.galaxy_id[rows].astype(np.int64),
            f"{domain}_measured": ok[test],
        }
    )


def _classifier_summary(clf: Any, medians: np.ndarray, train_size: int) -> dict[str, Any]:
    lr = clf[-1]
    return {
        "model": "logistic regression on standardised (gini, m20, asymmetry), C=1",
        "features": list(FEATURES),
        "coef": lr.coef_[0].tolist(),
        "intercept": float(lr.intercept_[0]),
        "scaler_mean": clf[0].mean_.tolist(),
        "scaler_scale": clf[0].scale_.tolist(),
        "train_size": train_size,
        "fill_values": dict(zip(FEATURES, medians.tolist())),
    }


def fit_and_score(
    measured: dict[str, dict[str, np.ndarray]],
    data: dict[str, DomainData],
    split_seed: int,
    split_fractions: Sequence[float],
) -> dict[str, Any]:
    """Fit on source-training stamps, fill failures with source-training medians, score tests."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if data["source"].labels is None:
        raise GaldaError(f"{data['source'].path}: the source domain must have labels")
    split = datamodule_split(data, split_seed, split_fractions)
    masks = {d: {s: np.isin(data[d].galaxy_id, split[s]) for s in split} for d in data}
    train = masks["source"]["train"] & measured["source"]["measured"]
    y_train = data["source"].labels[train]
    if len(np.unique(y_train)) < 2:
        raise GaldaError(
            f"{data['source'].path}: the source training split has fewer than two classes among "
            "measured stamps; use a larger data set"
        )
    x_src = _matrix(measured["source"])
    medians = np.median(x_src[train], axis=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    clf.fit(x_src[train], y_train)
    out: dict[str, Any] = {"confusion": {}, "predictions": {}, "split_sizes": {}}
    for domain, dd in data.items():
        ok = measured[domain]["measured"]
        x = np.where(ok[:, None], _matrix(measured[domain]), medians[None, :])
        out["split_sizes"][domain] = {s: int(m.sum()) for s, m in masks[domain].items()}
        test = masks[domain]["test"]
        out[f"measured_fraction_test/{domain}"] = float(ok[test].mean()) if test.any() else None
        if dd.labels is not None and test.any():
            _score_domain(out, domain, dd, x, ok, test, clf)
    out["classifier"] = _classifier_summary(clf, medians, int(train.sum()))
    return out


def _read(path: Path) -> DomainData:
    try:
        return read_domain(path)
    except DataFormatError as err:
        raise GaldaError(str(err)) from err


def _data_name(data: DomainData) -> str:
    attrs = data.attrs
    if attrs.get("producer") == "galda.simulate" and attrs.get("preset"):
        return str(attrs["preset"])
    assert data.path is not None
    return data.path.parent.name


def _flag_counts(measured: dict[str, np.ndarray]) -> dict[str, int]:
    """How many stamps got each statmorph flag value."""
    return {str(k): int(v) for k, v in zip(*np.unique(measured["flag"], return_counts=True))}


def _feature_medians(measured: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Median of each feature over the measured stamps (None when none was measured)."""
    return {
        f: float(np.nanmedian(measured[f])) if measured["measured"].any() else None
        for f in FEATURES
    }


def run_classical(
    source_path: str | os.PathLike,
    target_path: str | os.PathLike,
    out: str | os.PathLike,
    name: str | None = None,
    split_seed: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    band: int = -1,
    n_jobs: int = 1,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure, fit, score and write ``results.json`` + ``predictions.npz`` into ``out``."""
    import statmorph

    started = time.time()
    data = {"source": _read(Path(source_path)), "target": _read(Path(target_path))}
    measured: dict[str, dict[str, np.ndarray]] = {}
    infos: dict[str, Any] = {}
    for domain, dd in data.items():
        measured[domain], infos[domain] = measure_domain(dd, band, n_jobs, cache_dir, progress)
    scores = fit_and_score(measured, data, split_seed, split_fractions)
    bands = data["source"].attrs.get("band_names")
    band_index = infos["source"]["band_index"]
    results: dict[str, Any] = {
        "status": "complete",
        "error": None,
        "data": name or _data_name(data["source"]),
        "model": MODEL_NAME,
        "method": METHOD_NAME,
        "method_label": "Gini–M20 + A (classical)",
        "seed": 0,
        "uses_target_images": False,
        "uses_target_labels": False,
        "selection": None,
        **{k: v for k, v in scores.items() if k.startswith("test/")},
        "measured_fraction": {d: float(measured[d]["measured"].mean()) for d in data},
        "measured_fraction_test": {d: scores[f"measured_fraction_test/{d}"] for d in data},
        "statmorph_flags": {d: _flag_counts(measured[d]) for d in data},
        "feature_medians": {d: _feature_medians(measured[d]) for d in data},
        "band": bands[band_index] if isinstance(bands, list) else band_index,
        "classifier": scores["classifier"],
        "confusion": scores["confusion"],
        "split_sizes": scores["split_sizes"],
        "split": {"seed": split_seed, "fractions": list(split_fractions)},
        "measurement": {**SETTINGS, **{d: infos[d] for d in data}},
        "source_path": str(source_path),
        "target_path": str(target_path),
        "wall_time_s": round(time.time() - started, 2),
        "n_jobs": n_jobs,
        "git_commit": res.git_commit(),
        "versions": {**res.package_versions(), "statmorph": statmorph.__version__},
        "run_dir": str(Path(out).resolve()),
        "predictions": res.PREDICTIONS_FILE,
        "overrides": [],
    }
    res.write_predictions(out, scores["predictions"])
    res.write_results(out, results)
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m galda.classical",
        description="Gini–M20 + asymmetry (statmorph) logistic regression: a classical row.",
    )
    p.add_argument("data", nargs="?", help="folder holding source.h5 and target.h5")
    p.add_argument("--source", help="source domain file (instead of DATA)")
    p.add_argument("--target", help="target domain file (instead of DATA)")
    p.add_argument("--out", required=True, help="run folder for results.json and predictions.npz")
    p.add_argument(
        "--name",
        help="data-set name in results.json (default: the simulator preset, "
        "else the data folder's name); must match the training runs' data name",
    )
    p.add_argument("--split-seed", type=int, default=0, help="the DataModule's split_seed")
    p.add_argument(
        "--split-fractions",
        type=float,
        nargs=3,
        default=(0.7, 0.1, 0.2),
        metavar=("TRAIN", "VAL", "TEST"),
        help="the DataModule's split_fractions",
    )
    p.add_argument(
        "--band",
        type=int,
        default=-1,
        help="channel to measure (default: the last, F160W in the simulator's order)",
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes")
    p.add_argument(
        "--cache-dir",
        help="where the .npz measurement cache goes (default: beside "
        "the data, else outputs/cache/classical)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from galda.diagnose.data import resolve_domain_paths

        src, tgt = resolve_domain_paths(args.data, args.source, args.target)
        if args.jobs < 1:
            raise GaldaError(f"--jobs {args.jobs}: give a positive number of processes")
        result = run_classical(
            src,
            tgt,
            args.out,
            name=args.name,
            split_seed=args.split_seed,
            split_fractions=args.split_fractions,
            band=args.band,
            n_jobs=args.jobs,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
    except GaldaError as err:
        print(f"galda.classical: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        log.exception("galda.classical failed")
        print(f"galda.classical: unexpected error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    for d in ("source", "target"):
        if f"test/{d}/acc" in result:
            print(
                f"{d}: test accuracy {result[f'test/{d}/acc']:.3f}, AUROC "
                f"{result[f'test/{d}/auroc']:.3f}, measured {result['measured_fraction'][d]:.3f}"
            )
    print(f"wrote {Path(args.out) / res.RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    # Run the imported module's main, so worker processes unpickle galda.classical functions
    # rather than looking for them in __main__.
    from galda.classical import main as _main

    sys.exit(_main())
