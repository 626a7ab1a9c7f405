"""The public DeepMerge arrays (Zenodo record 4507941) -> ``source.h5`` + ``target.h5``.

File names follow ``{SimSim,SimReal}_{SOURCE,TARGET}_{X,y}_<suffix>.npy``; the match ignores
case, so the lower-case ``x`` of some public copies (``SimReal_TARGET_x_postmergers_SDSS.npy``)
is found as well. The target ``y`` file is optional: without it the target is unlabelled.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from galda.ingest.convert import DomainInput, Report, ingest_pair
from galda.ingest.errors import IngestError
from galda.ingest.sources import npy_images, npy_labels

SETS = {"simsim": "SimSim", "simreal": "SimReal"}
ZENODO_RECORD = "4507941"
EXPECTED = {
    "simsim": [
        "SimSim_SOURCE_X_Illustris2_pristine.npy",
        "SimSim_SOURCE_y_Illustris2_pristine.npy",
        "SimSim_TARGET_X_Illustris2_noisy.npy",
        "SimSim_TARGET_y_Illustris2_noisy.npy",
    ],
    "simreal": [
        "SimReal_SOURCE_X_Illustris0.npy",
        "SimReal_SOURCE_y_Illustris0.npy",
        "SimReal_TARGET_X_postmergers_SDSS.npy",
        "SimReal_TARGET_y_postmergers_SDSS.npy",
    ],
}
DESCRIPTION = {
    "simsim": "DeepMerge SimSim: Illustris-1 z=2 mergers, PSF-convolved (source, pristine) vs "
    "with sky noise (target, noisy); Ciprijanovic et al. 2020, Zenodo 4507941",
    "simreal": "DeepMerge SimReal: Illustris-1 z=0 SDSS-like images (source) vs real SDSS "
    "post-mergers with Galaxy Zoo labels (target); Zenodo 4507941",
}
FILTERS_REPORTED = {
    "simsim": "ACS F814W, NIRCam F356W, WFC3 F160W (as listed in the paper; channel order in "
    "the arrays not verified)",
}
_PATTERN = re.compile(r"^(simsim|simreal)_(source|target)_([xy])_(.+)\.npy$", re.IGNORECASE)


@dataclass
class DeepMergeFiles:
    """The four (or three, without target labels) files of one DeepMerge set."""

    set: str  # 'simsim' or 'simreal'
    source_x: Path
    source_y: Path
    target_x: Path
    target_y: Path | None


def find_deepmerge_files(folder: str | os.PathLike, set: str = "auto") -> DeepMergeFiles:
    """Find a DeepMerge set's files in ``folder`` by pattern; ``set`` is simsim, simreal or auto."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IngestError(folder, "folder not found")
    set = set.lower()
    if set not in ("auto", *SETS):
        raise IngestError(None, f"--set must be simsim, simreal or auto, not {set!r}")
    found: dict[tuple[str, str, str], list[Path]] = {}
    for p in sorted(folder.iterdir()):
        m = _PATTERN.match(p.name)
        if m and p.is_file():
            key = (m.group(1).lower(), m.group(2).lower(), m.group(3).lower())
            found.setdefault(key, []).append(p)
    present = sorted({k[0] for k in found})
    if set == "auto":
        if not present:
            names = ", ".join(EXPECTED["simsim"] + EXPECTED["simreal"])
            raise IngestError(
                folder,
                f"no DeepMerge files found; expected e.g. {names} (Zenodo record {ZENODO_RECORD})",
            )
        if len(present) > 1:
            raise IngestError(
                folder,
                "both SimSim and SimReal files found; choose one with --set simsim or "
                "--set simreal",
            )
        set = present[0]

    def one(domain: str, kind: str, required: bool) -> Path | None:
        paths = found.get((set, domain, kind), [])
        if len(paths) > 1:
            raise IngestError(
                folder,
                f"ambiguous: several {SETS[set]} {domain.upper()} {kind} files: "
                + ", ".join(p.name for p in paths),
            )
        if not paths:
            if required:
                prefix = f"{SETS[set]}_{domain.upper()}_{kind}_".lower()
                want = [n for n in EXPECTED[set] if n.lower().startswith(prefix)]
                what = "images" if kind == "x" else "labels"
                glob = f"{SETS[set]}_{domain.upper()}_{'X' if kind == 'x' else 'y'}_*.npy"
                raise IngestError(
                    folder,
                    f"missing {SETS[set]} {domain} {what}: no file matching {glob}"
                    + (f" (public name {want[0]})" if want else ""),
                )
            return None
        return paths[0]

    return DeepMergeFiles(
        set=set,
        source_x=one("source", "x", True),  # type: ignore[arg-type]
        source_y=one("source", "y", True),  # type: ignore[arg-type]
        target_x=one("target", "x", True),  # type: ignore[arg-type]
        target_y=one("target", "y", False),
    )


def _domain(files: DeepMergeFiles, domain: str, x: Path, y: Path | None) -> DomainInput:
    images = npy_images(x)
    labels = npy_labels(y, len(images), x.name) if y is not None else None
    attrs = {
        "dataset": SETS[files.set],
        "input_format": "deepmerge-npy",
        "description": DESCRIPTION[files.set],
        "filters_reported": FILTERS_REPORTED.get(files.set),
    }
    names = [x.name] + ([y.name] if y is not None else [])
    return DomainInput(domain, images, labels, None, attrs, names, [y] if y is not None else [])


def ingest_deepmerge(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    set: str = "auto",
    force: bool = False,
    drop_nonfinite: bool = False,
    size: int | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    report: Report | None = None,
) -> dict[str, Path]:
    """Convert a DeepMerge set in ``folder`` to ``out/source.h5`` and ``out/target.h5``.

    The arrays carry no galaxy ids, so ``galaxy_id`` is the row index: the augmented copies and
    camera views of one galaxy may then fall on both sides of a train/test split.
    """
    files = find_deepmerge_files(folder, set)
    if report and files.target_y is None:
        report(f"{files.target_x}: no target labels file found; the target is unlabelled")
    source = _domain(files, "source", files.source_x, files.source_y)
    try:
        target = _domain(files, "target", files.target_x, files.target_y)
        try:
            return ingest_pair(
                source,
                target,
                out,
                force=force,
                drop_nonfinite=drop_nonfinite,
                size=size,
                chunk_size=chunk_size,
                progress=progress,
                report=report,
            )
        finally:
            target.images.close()
    finally:
        source.images.close()
