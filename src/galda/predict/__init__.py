"""Classify images with a trained model and write a catalogue: ``python -m galda.predict``.

Library::

    from galda.predict import predict
    table = predict("outputs/runs/<run>", "survey/stamps/", out="catalogue.fits", id_key="OBJID")

See ``docs/predict.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from galda.errors import GaldaError
from galda.predict.core import (
    Predictions,
    build_catalogue,
    catalogue_bytes,
    check_compatible,
    check_models,
    check_not_input,
    check_output,
    check_writable,
    run_models,
    write_outputs,
)
from galda.predict.inputs import PredictInput, open_input

__all__ = [
    "PredictInput",
    "Predictions",
    "build_catalogue",
    "open_input",
    "predict",
    "run_models",
]


def predict(
    model: str | os.PathLike,
    input: str | os.PathLike,
    out: str | os.PathLike | None = None,
    domain: str = "target",
    calibrated: bool = True,
    threshold: float = 0.5,
    batch_size: int = 256,
    device: str = "auto",
    id_key: str | None = None,
    ids: str | None = None,
    images_key: str = "images",
    gallery: str | os.PathLike | None = None,
    gallery_size: int = 6,
    force: bool = False,
    progress: bool = True,
) -> Any:
    """Classify every image of ``input`` with ``model``; return the catalogue (astropy Table).

    ``model``: checkpoint, run folder or sweep folder (several runs: ensemble columns). ``input``:
    see :func:`galda.predict.inputs.open_input`. Everything that can be checked (model, input
    shape and bands, ids, output paths) is checked before any image is classified; the catalogue
    (``out``: .csv, .ecsv or .fits) and ``gallery`` (PNG) are written atomically after the last
    image, so an error leaves no file behind. Raises GaldaError (or IngestError) for bad input.
    """
    from galda.inference import load_model

    if not 0.0 <= threshold <= 1.0:
        raise GaldaError(f"--threshold {threshold}: must lie in [0, 1]")
    if batch_size < 1:
        raise GaldaError(f"--batch-size {batch_size}: must be at least 1")
    outputs = {
        "--out": check_output(out, force) if out is not None else None,
        "--gallery": check_output(gallery, force, "--gallery") if gallery is not None else None,
    }
    ids_table = ids.rsplit(":", 1)[0] if ids and ":" in ids else None
    _check_outputs(
        outputs, [("the model", model), ("the images", input), ("the --ids table", ids_table)]
    )
    loaded = load_model(model, domain=domain, calibrated=calibrated)
    models = loaded if isinstance(loaded, list) else [loaded]
    check_models(models)
    _check_outputs(outputs, [("a checkpoint", m.checkpoint) for m in models], probe=False)
    inp = open_input(input, id_key=id_key, ids=ids, images_key=images_key)
    try:
        for flag, path in outputs.items():  # a stamp of a folder input, by its name
            if path is not None and inp.stamp_paths is not None:
                names = {path.name, path.resolve().name}
                stamps = [p for p in inp.stamp_paths if p.name in names]
                check_not_input(path, [("one of the image stamps", p) for p in stamps], flag)
        check_compatible(inp, models[0])
        preds = run_models(models, inp, batch_size=batch_size, device=device, progress=progress)
        table = build_catalogue(preds, models, inp, threshold, str(model))
        _write(table, preds, inp, outputs["--out"], outputs["--gallery"], gallery_size)
    finally:
        inp.close()
    return table


def _check_outputs(
    outputs: dict[str, Path | None],
    inputs: list[tuple[str, Any]],
    probe: bool = True,
) -> None:
    """Refuse an output that is one of ``inputs``; with ``probe``, test-write its folder."""
    for flag, path in outputs.items():
        if path is not None:
            check_not_input(path, inputs, flag)
            if probe:
                check_writable(path)


def _write(
    table: Any,
    preds: Any,
    inp: Any,
    out_path: Path | None,
    gallery_path: Path | None,
    gallery_size: int,
) -> None:
    """The catalogue and the gallery, each atomically (a failed second write removes the first)."""
    from galda.results import atomic_write_bytes

    writes: list[tuple[Path, Any]] = []
    if out_path is not None:
        payload = catalogue_bytes(table, out_path)
        writes.append((out_path, lambda: atomic_write_bytes(out_path, payload)))
    if gallery_path is not None:
        from galda.predict.gallery import write_gallery

        ids_col = table["object_id"] if "object_id" in table.colnames else None
        writes.append(
            (
                gallery_path,
                lambda: write_gallery(gallery_path, inp, preds.mean, ids_col, gallery_size),
            )
        )
    write_outputs(writes)
