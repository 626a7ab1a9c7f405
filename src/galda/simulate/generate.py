"""Drive the simulator: plan the systems, render them in worker processes, write the two domains."""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from galda.data.h5format import DomainWriter
from galda.simulate import physics as P

# name -> counts of images per domain and camera views per system
PRESETS: dict[str, dict[str, int]] = {
    # unit tests: both classes, a few seconds
    "tiny": {"n_mergers": 32, "n_nonmergers": 32, "views": 2},
    # quick runs: ~3,000 images per domain at the paper's class ratio (8,120 : 7,306)
    "small": {"n_mergers": 1578, "n_nonmergers": 1422, "views": 2},
    # the paper's counts; each system seen in 4 camera views, as the Illustris images were
    "paper": {"n_mergers": 8120, "n_nonmergers": 7306, "views": 4},
}
TARGET_ID_OFFSET = 1_000_000_000  # galaxy ids of independently drawn target systems (paired=False)
SYSTEMS_PER_TASK = 8
WRITE_BLOCK = 256


def default_out(preset: str, seed: int) -> Path:
    """The folder the DataModule's configs use: ``data/simulated/<preset>-seed<seed>``."""
    return Path("data") / "simulated" / f"{preset}-seed{seed}"


def resolve_preset(
    preset: str,
    views: int | None = None,
    n_mergers: int | None = None,
    n_nonmergers: int | None = None,
) -> dict[str, int]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = dict(PRESETS[preset])
    for key, val in (("views", views), ("n_mergers", n_mergers), ("n_nonmergers", n_nonmergers)):
        if val is not None:
            cfg[key] = int(val)
    if cfg["views"] < 1 or cfg["n_mergers"] < 1 or cfg["n_nonmergers"] < 1:
        raise ValueError(f"views, n_mergers and n_nonmergers must be >= 1, got {cfg}")
    return cfg


def plan_systems(
    cfg: dict[str, int], seed: int, stream: int, id_offset: int
) -> list[tuple[int, int, int]]:
    """(galaxy_id, label, n_views) per system, classes interleaved in a seeded random order.

    Each class gets ceil(n / views) systems; the last one keeps only the views needed for the exact
    image count.
    """
    systems: list[tuple[int, int]] = []
    for label, n in ((1, cfg["n_mergers"]), (0, cfg["n_nonmergers"])):
        v = cfg["views"]
        n_sys = math.ceil(n / v)
        systems += [(label, v)] * (n_sys - 1) + [(label, n - (n_sys - 1) * v)]
    order = np.random.default_rng(np.random.SeedSequence([seed, 3, stream])).permutation(
        len(systems)
    )
    return [(id_offset + i, systems[j][0], systems[j][1]) for i, j in enumerate(order)]


def _init_worker() -> None:
    try:  # one BLAS thread per worker: faster here and the same arithmetic in every process
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass


def _render_task(
    task: tuple[int, list[tuple[int, int, int]], bool, tuple[float, ...]],
) -> dict[str, Any]:
    seed, systems, noisy, sigma = task
    images, labels, gids, params = [], [], [], []
    for gid, label, n_views in systems:
        sysm = P.sample_system(seed, gid, label)
        for view in range(n_views):
            img, par = P.render_view(sysm, seed, gid, view)
            images.append(img)
            labels.append(label)
            gids.append(gid)
            params.append(par)
    src = np.stack(images)
    out: dict[str, Any] = {
        "source": src,
        "labels": np.asarray(labels, np.uint8),
        "galaxy_id": np.asarray(gids, np.int64),
        "params": {k: np.array([p[k] for p in params], np.float32) for k in P.PARAM_NAMES},
    }
    if noisy:
        views = out["params"]["view"].astype(int)
        out["target"] = np.stack(
            [P.add_noise(im, sigma, seed, g, v) for im, g, v in zip(src, out["galaxy_id"], views)]
        )
    return out


def _run_tasks(tasks: list, workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        try:
            from threadpoolctl import threadpool_limits

            ctx = threadpool_limits(1)
        except ImportError:  # pragma: no cover
            ctx = nullcontext()
        with ctx:
            for t in tasks:
                yield _render_task(t)
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context(method), initializer=_init_worker
    ) as ex:
        yield from ex.map(_render_task, tasks)


def file_attrs(
    domain: str,
    preset: str,
    seed: int,
    cfg: dict[str, int],
    paired: bool,
    sigma: np.ndarray,
    sb_limit: float,
) -> dict[str, Any]:
    import galsim

    return {
        "domain": domain,
        "producer": "galda.simulate",
        "preset": preset,
        "seed": int(seed),
        "paired": bool(paired),
        "views": int(cfg["views"]),
        "n_mergers": int(cfg["n_mergers"]),
        "n_nonmergers": int(cfg["n_nonmergers"]),
        "band_names": list(P.BAND_NAMES),
        "pixel_scale_arcsec": P.PIXEL_SCALE_ARCSEC,
        "psf_fwhm_arcsec": list(P.PSF_FWHM_ARCSEC),
        "psf_model": f"Moffat(beta={P.PSF_MOFFAT_BETA}) + {P.SPIKE_FRACTION:.0%} diffraction spikes",
        "noise_sigma": list(np.asarray(sigma, float))
        if domain == "target"
        else [0.0] * len(P.BAND_NAMES),
        "sb_limit_mag_arcsec2": float(sb_limit),
        "sb_limit_convention": P.SB_LIMIT_CONVENTION,
        "flux_unit": P.FLUX_UNIT,
        "ab_zeropoint": P.AB_ZEROPOINT_NJY,
        "galsim_version": galsim.__version__,
        "description": (
            "PSF-convolved noiseless ('pristine') images"
            if domain == "source"
            else "the same kind of images plus Gaussian sky noise ('noisy')"
        ),
    }


def _matches(path: Path, expect: dict[str, Any]) -> bool:
    try:
        with h5py.File(path, "r") as f:
            for k, v in expect.items():
                got = f.attrs.get(k)
                got = got.decode() if isinstance(got, bytes) else got
                if isinstance(v, float):
                    if got is None or not np.isclose(float(got), v):
                        return False
                elif got is None or type(v)(got) != v:
                    return False
        return True
    except OSError:
        return False


def _reuse_existing(
    src_path: Path, tgt_path: Path, expect: dict[str, Any], overwrite: bool
) -> bool:
    """True if both files exist with the requested attributes (and ``overwrite`` is false).

    Raises :class:`FileExistsError` if a file exists with other settings and ``overwrite`` is false.
    """
    ours = [p for p in (src_path, tgt_path) if p.exists() and _matches(p, expect)]
    if overwrite:
        return False
    if len(ours) == 2:
        return True
    foreign = [str(p) for p in (src_path, tgt_path) if p.exists() and p not in ours]
    if foreign:
        raise FileExistsError(
            f"{', '.join(foreign)}: exists but was made with other settings than {expect}; "
            "pass overwrite=True (CLI: overwrite=true) or choose another out"
        )
    return False


def _plan_jobs(
    cfg: dict[str, int], seed: int, paired: bool, sigma: np.ndarray
) -> list[tuple[list, tuple[str, ...]]]:
    """(render tasks, domains they fill) per pass: one pass if paired, one per domain if not."""

    def chunks(plan: list, noisy: bool) -> list:
        return [
            (int(seed), plan[i : i + SYSTEMS_PER_TASK], noisy, tuple(sigma))
            for i in range(0, len(plan), SYSTEMS_PER_TASK)
        ]

    src_plan = plan_systems(cfg, seed, stream=0, id_offset=0)
    if paired:
        return [(chunks(src_plan, True), ("source", "target"))]
    tgt_plan = plan_systems(cfg, seed, stream=1, id_offset=TARGET_ID_OFFSET)
    return [(chunks(src_plan, False), ("source",)), (chunks(tgt_plan, True), ("target",))]


def _concat(parts: list[dict[str, Any]], domains: Iterable[str]) -> dict[str, Any]:
    """Rendered task results joined along the image axis."""
    return {
        "labels": np.concatenate([r["labels"] for r in parts]),
        "galaxy_id": np.concatenate([r["galaxy_id"] for r in parts]),
        "params": {k: np.concatenate([r["params"][k] for r in parts]) for k in P.PARAM_NAMES},
        **{d: np.concatenate([r[d] for r in parts]) for d in domains},
    }


def _rows(block: dict[str, Any], rows: slice, domains: Iterable[str]) -> dict[str, Any]:
    """The ``rows`` of a joined block (all its arrays sliced alike)."""
    return {
        "labels": block["labels"][rows],
        "galaxy_id": block["galaxy_id"][rows],
        "params": {c: v[rows] for c, v in block["params"].items()},
        **{d: block[d][rows] for d in domains},
    }


class _BlockBuffer:
    """Collects rendered tasks; writes them to the domain writers in blocks of ``WRITE_BLOCK`` rows.

    Whole HDF5 chunks (64 images; WRITE_BLOCK is a multiple) are written because a partial-chunk
    write to a compressed dataset re-compresses that chunk every time.
    """

    def __init__(self, writers: dict[str, DomainWriter]) -> None:
        self.writers = writers
        self.start = 0  # rows written so far
        self.buf: list[dict[str, Any]] = []

    def add(self, res: dict[str, Any]) -> None:
        self.buf.append(res)
        if sum(len(r["labels"]) for r in self.buf) >= WRITE_BLOCK:
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Write all whole blocks held (everything if ``final``); keep the remainder."""
        if not self.buf:
            return
        cat = _concat(self.buf, self.writers)
        n = len(cat["labels"])
        k = n if final else n - n % WRITE_BLOCK
        head = _rows(cat, slice(None, k), self.writers)
        for d, w in self.writers.items():
            w.write(self.start, head[d], head["labels"], head["galaxy_id"], head["params"])
        self.start += k
        self.buf = [_rows(cat, slice(k, None), self.writers)] if k < n else []


def _write_pass(
    tasks: list,
    paths: dict[str, Path],
    attrs: dict[str, dict[str, Any]],
    n_img: int,
    workers: int,
    bar: Any,
) -> None:
    """Render ``tasks``; write the domains named in ``paths`` (``attrs``: their file attributes)."""
    with ExitStack() as stack:
        writers = {
            d: stack.enter_context(
                DomainWriter(
                    path,
                    n=n_img,
                    image_shape=(len(P.BAND_NAMES), P.STAMP_PIXELS, P.STAMP_PIXELS),
                    labelled=True,
                    attrs=attrs[d],
                    param_names=list(P.PARAM_NAMES),
                    overwrite=True,
                )
            )
            for d, path in paths.items()
        }
        blocks = _BlockBuffer(writers)
        for res in _run_tasks(tasks, workers):
            blocks.add(res)
            bar.update(len(res["labels"]))
        blocks.flush(final=True)
        assert blocks.start == n_img, (blocks.start, n_img)


def simulate_domains(
    preset: str = "small",
    out: str | Path | None = None,
    seed: int = 1,
    workers: int = 1,
    paired: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    *,
    views: int | None = None,
    n_mergers: int | None = None,
    n_nonmergers: int | None = None,
    sb_limit: float = P.SB_LIMIT_MAG_ARCSEC2,
) -> tuple[Path, Path]:
    """Render the source (pristine) and target (noisy) domains; return ``(source.h5, target.h5)``.

    ``out`` defaults to ``data/simulated/<preset>-seed<seed>``. If both files exist and
    ``overwrite`` is false they are returned as they are, provided their attributes match the request
    (preset, seed, paired, counts, views, sb_limit); otherwise :class:`FileExistsError` is raised.
    The output depends only on the arguments, never on ``workers``.
    """
    from tqdm.auto import tqdm

    cfg = resolve_preset(preset, views, n_mergers, n_nonmergers)
    out = Path(out) if out is not None else default_out(preset, seed)
    paths = {"source": out / "source.h5", "target": out / "target.h5"}
    expect = {
        "preset": preset,
        "seed": int(seed),
        "paired": bool(paired),
        "views": cfg["views"],
        "n_mergers": cfg["n_mergers"],
        "n_nonmergers": cfg["n_nonmergers"],
        "sb_limit_mag_arcsec2": float(sb_limit),
        "sb_limit_convention": P.SB_LIMIT_CONVENTION,
    }
    if _reuse_existing(paths["source"], paths["target"], expect, overwrite):
        return paths["source"], paths["target"]
    workers = max(1, int(workers))
    sigma = P.noise_sigma_per_band(sb_limit)
    attrs = {d: file_attrs(d, preset, seed, cfg, paired, sigma, sb_limit) for d in paths}
    n_img = cfg["n_mergers"] + cfg["n_nonmergers"]
    jobs = _plan_jobs(cfg, seed, paired, sigma)
    bar = tqdm(total=n_img * len(jobs), desc=f"simulate {preset}", unit="img", disable=not progress)
    with bar:
        for tasks, domains in jobs:
            _write_pass(tasks, {d: paths[d] for d in domains}, attrs, n_img, workers, bar)
    return paths["source"], paths["target"]


def summarize(path: str | Path, block: int = 1024) -> dict[str, Any]:
    """Counts per class and per-band mean / std of a domain file, read in blocks."""
    with h5py.File(path, "r") as f:
        labels = f["labels"][()]
        imgs = f["images"]
        n, c = imgs.shape[:2]
        s = np.zeros(c)
        ss = np.zeros(c)
        for i in range(0, n, block):
            x = imgs[i : i + block].astype(np.float64)
            s += x.sum(axis=(0, 2, 3))
            ss += (x**2).sum(axis=(0, 2, 3))
        m = n * imgs.shape[2] * imgs.shape[3]
        mean = s / m
        std = np.sqrt(np.maximum(ss / m - mean**2, 0.0))
        bands = [b.decode() if isinstance(b, bytes) else str(b) for b in f.attrs["band_names"]]
        return {
            "n": int(n),
            "n_mergers": int((labels == 1).sum()),
            "n_nonmergers": int((labels == 0).sum()),
            "n_galaxies": len(np.unique(f["galaxy_id"][()])),
            "band_names": bands,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "noise_sigma": [float(v) for v in f.attrs["noise_sigma"]],
        }
