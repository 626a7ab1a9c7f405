"""``python -m galda.predict MODEL INPUT --out catalogue.{csv,ecsv,fits}``.

Exit status: 0 done; 2 bad input or settings (one line naming the file and the fix, nothing
written); 1 an unexpected error (with its traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

PROG = "galda.predict"

EPILOG = """\
MODEL is a checkpoint (.ckpt), a run folder (its results.json names the checkpoint) or a sweep
folder (every completed run below it: ensemble mean, std and member count). INPUT is a galda or
other HDF5 file (--images-key), an .npy array (N, C, H, W), a FITS cube, or a folder of FITS/.npy
stamps. Images are raw, as in the files: the model normalises them with the statistics of the
domain it was trained on (--domain).

examples:
  python -m galda.predict outputs/runs/<run> survey.npy --out catalogue.csv
  python -m galda.predict outputs/multirun/seeds stamps/ --out cat.fits --id-key OBJID \\
      --gallery cat.png
  python -m galda.predict model.ckpt cube.fits --ids objects.csv:objid --out cat.ecsv

See docs/predict.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Classify images with a trained galda model; write a catalogue.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="checkpoint, run folder or sweep folder")
    p.add_argument("input", metavar="INPUT", help="HDF5, .npy, FITS cube or folder of stamps")
    _add_reading(p.add_argument_group("reading the images"))
    _add_writing(p.add_argument_group("the catalogue"))
    run = p.add_argument_group("running")
    run.add_argument(
        "--batch-size",
        type=int,
        default=256,
        metavar="N",
        help="images per chunk read and classified (default 256)",
    )
    run.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    run.add_argument("--force", action="store_true", help="replace existing output files")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    return p


def _add_writing(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="catalogue to write: .csv, .ecsv or .fits (FITS, ECSV keep units, header)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="predicted_class = 1 when p_merger > THRESHOLD (default 0.5)",
    )
    p.add_argument(
        "--gallery",
        default=None,
        metavar="PNG",
        help="also draw the most and least confident images",
    )
    p.add_argument(
        "--gallery-size",
        type=int,
        default=6,
        metavar="K",
        help="images per gallery row (default 6)",
    )


def _add_reading(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--domain",
        choices=("source", "target"),
        default="target",
        help="whose normalisation statistics to apply (default: target)",
    )
    p.add_argument(
        "--no-calibration",
        dest="calibrated",
        action="store_false",
        help="ignore the temperature stored in the checkpoint (raw softmax)",
    )
    p.add_argument(
        "--id-key",
        default=None,
        metavar="KEY",
        help="object ids: a FITS header keyword of each stamp, or an HDF5 dataset "
        "(default for HDF5: galaxy_id when present)",
    )
    p.add_argument(
        "--ids",
        default=None,
        metavar="TABLE.csv:COLUMN",
        help="object ids from a CSV column (one row per image in input order, or a "
        "filename column for stamps)",
    )
    p.add_argument(
        "--images-key",
        default="images",
        metavar="KEY",
        help="images dataset of an HDF5 input (default: images)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from galda.data.h5format import DataFormatError
    from galda.errors import GaldaError
    from galda.ingest.errors import IngestError
    from galda.predict import predict

    try:
        table = predict(
            args.model,
            args.input,
            out=args.out,
            domain=args.domain,
            calibrated=args.calibrated,
            threshold=args.threshold,
            batch_size=args.batch_size,
            device=args.device,
            id_key=args.id_key,
            ids=args.ids,
            images_key=args.images_key,
            gallery=args.gallery,
            gallery_size=args.gallery_size,
            force=args.force,
            progress=not args.quiet,
        )
    except (GaldaError, IngestError, DataFormatError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - unexpected: show the traceback, exit 1
        traceback.print_exc()
        return 1
    if not args.quiet:
        meta = table.meta
        n_merger = int(table["predicted_class"].sum())
        calib = f"T = {meta['TEMPER']}" if meta["CALIB"] else "uncalibrated"
        print(
            f"{PROG}: {len(table)} images, {n_merger} predicted mergers "
            f"(p > {args.threshold}; {meta['NMEMBERS']} member(s), {calib}) -> {args.out}",
            file=sys.stderr,
        )
    return 0
