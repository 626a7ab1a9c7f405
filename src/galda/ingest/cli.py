"""``python -m galda.ingest``: convert data to galda domain files (HDF5).

User errors print ``galda.ingest: error: <file>: <problem>`` and exit with status 2, without a
traceback; an interruption exits with 130 and leaves no partial output at the final path.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from galda.ingest.errors import IngestError

PROG = "galda.ingest"

EPILOG = """\
examples:
  python -m galda.ingest deepmerge ~/deepmerge --set simsim --out data/simsim
  python -m galda.ingest npy --x X.npy --y y.npy --domain source --out data/mine/source.h5
  python -m galda.ingest npy --x sdss.npy --domain target --out data/mine/target.h5 \\
      --match data/mine/source.h5
  python -m galda.ingest fits --cube cube.fits --labels labels.csv --domain source --out s.h5
  python -m galda.ingest fits --stamps stamps/ --labels stamps.csv --domain target --out t.h5
  python -m galda.ingest stream data/survey/target.h5 --out data/survey/target-stream.h5

Images must be channels-first (N, C, H, W) and square. See docs/ingest.md.
"""


def _common(p: argparse.ArgumentParser, single: bool) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--force", action="store_true", help="replace existing output files")
    g.add_argument(
        "--drop-nonfinite",
        action="store_true",
        help="drop images with NaN/inf pixels (with a count) instead of refusing the input",
    )
    g.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="PIX",
        help="require images of PIX x PIX pixels (default: any square size)",
    )
    g.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        metavar="N",
        help="images per read/write chunk (default: about 64 MiB)",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    if single:
        g.add_argument("--out", required=True, metavar="FILE.h5", help="output domain file")
        g.add_argument("--domain", required=True, choices=("source", "target"))
        g.add_argument("--name", dest="dataset", default=None, help="data set name (attribute)")
        g.add_argument(
            "--band-names",
            default=None,
            metavar="B1,B2,...",
            help="comma-separated band names (default band0, band1, ...)",
        )
        g.add_argument(
            "--pixel-scale",
            dest="pixel_scale_arcsec",
            type=float,
            default=None,
            metavar="ARCSEC",
            help="pixel scale in arcsec (default NaN: unknown)",
        )
        g.add_argument(
            "--match",
            default=None,
            metavar="OTHER.h5",
            help="an existing domain file whose C, H, W the new one must share",
        )


def _add_deepmerge(sub: Any) -> None:
    p = sub.add_parser(
        "deepmerge",
        help="the public DeepMerge SimSim / SimReal .npy files",
        description="Convert a DeepMerge set (Zenodo record 4507941) to "
        "OUT/source.h5 and OUT/target.h5.",
    )
    p.add_argument("dir", metavar="DIR", help="folder holding the DeepMerge .npy files")
    p.add_argument("--out", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument(
        "--set",
        default="auto",
        choices=("simsim", "simreal", "auto"),
        help="which set to convert (default: the one present in DIR)",
    )
    _common(p, single=False)


def _add_npy(sub: Any) -> None:
    p = sub.add_parser(
        "npy",
        help="a generic images .npy with optional labels / galaxy ids",
        description="Convert an images .npy (N, C, H, W); memory-mapped, so files "
        "larger than memory convert.",
    )
    p.add_argument("--x", required=True, metavar="X.npy", help="images (N, C, H, W)")
    p.add_argument("--y", default=None, metavar="y.npy", help="labels 0/1 (N,); omit if unlabelled")
    p.add_argument(
        "--galaxy-ids",
        default=None,
        metavar="IDS.npy",
        help="integer galaxy ids (N,); default: the row index",
    )
    _common(p, single=True)


def _add_fits(sub: Any) -> None:
    p = sub.add_parser(
        "fits",
        help="a FITS cube, or a folder of FITS stamps plus a CSV",
        description="Convert a FITS cube (N, C, H, W) or a folder of stamps, each "
        "(C, H, W) or (H, W), listed in a CSV with columns filename[,label]"
        "[,galaxy_id].",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cube", default=None, metavar="CUBE.fits")
    src.add_argument("--stamps", default=None, metavar="DIR")
    p.add_argument(
        "--labels",
        default=None,
        metavar="LABELS.csv",
        help="CSV with a header; required with --stamps (filename column)",
    )
    p.add_argument("--y", default=None, metavar="y.npy", help="labels for a cube, as .npy")
    p.add_argument("--galaxy-ids", default=None, metavar="IDS.npy", help="ids for a cube, as .npy")
    _common(p, single=True)


def _add_hdf5(sub: Any) -> None:
    p = sub.add_parser(
        "hdf5",
        help="datasets of another HDF5 file",
        description="Convert images (N, C, H, W) and optional labels / ids "
        "stored as datasets of any HDF5 file.",
    )
    p.add_argument("file", metavar="FILE.h5")
    p.add_argument("--images-key", default="images")
    p.add_argument("--labels-key", default=None)
    p.add_argument("--galaxy-id-key", default=None)
    _common(p, single=True)


def _add_stream(sub: Any) -> None:
    p = sub.add_parser(
        "stream",
        help="copy a galda domain file into the layout data.out_of_core streams fast",
        description="Copy a galda domain file with one uncompressed chunk per image, so "
        "random batches read each image on its own (data.out_of_core; docs/training.md). "
        "Labels, galaxy ids, parameters and attributes are kept.",
    )
    p.add_argument("file", metavar="FILE.h5", help="a galda domain file")
    p.add_argument("--out", required=True, metavar="OUT.h5", help="the streaming copy")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")


def _run_stream(args: argparse.Namespace) -> None:
    from pathlib import Path

    from galda.data.h5format import DataFormatError
    from galda.data.h5stream import rechunk_for_streaming

    src, out = Path(args.file), Path(args.out)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise IngestError(out, "--out is the input file; write the copy under another name")
    if out.exists() and not args.force:
        raise IngestError(out, "already exists; add --force to replace it")
    try:
        rechunk_for_streaming(src, out, overwrite=args.force)
    except DataFormatError as err:
        raise IngestError(None, str(err)) from err
    if not args.quiet:
        print(f"{PROG}: wrote {out} (one uncompressed chunk per image)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert images to galda domain files (HDF5).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_deepmerge, _add_npy, _add_fits, _add_hdf5, _add_stream):
        add(sub)
    return parser


def _reporter(quiet: bool) -> Callable[[str], None]:
    """Messages to stderr; with ``quiet`` only a dropped-images count is printed."""

    def report(msg: str) -> None:
        print(f"{PROG}: {msg}", file=sys.stderr)

    return report if not quiet else (lambda m: report(m) if "dropped" in m else None)


def _run_fits(args: argparse.Namespace, meta: dict[str, Any], options: dict[str, Any]) -> None:
    from galda.ingest import api

    if args.stamps is None:
        api.ingest_fits_cube(
            args.cube,
            args.out,
            args.domain,
            labels=args.labels,
            y=args.y,
            galaxy_ids=args.galaxy_ids,
            **meta,
            **options,
        )
        return
    if args.labels is None:
        raise IngestError(
            args.stamps,
            "--stamps needs --labels LABELS.csv (a filename column, plus label for labelled data)",
        )
    if args.y is not None or args.galaxy_ids is not None:
        raise IngestError(None, "with --stamps, give labels and ids in the CSV")
    api.ingest_fits_stamps(args.stamps, args.labels, args.out, args.domain, **meta, **options)


def _run(args: argparse.Namespace) -> None:
    from galda.ingest import api
    from galda.ingest.deepmerge import ingest_deepmerge

    if args.command == "stream":
        _run_stream(args)
        return
    options = dict(
        force=args.force,
        drop_nonfinite=args.drop_nonfinite,
        size=args.size,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
        report=_reporter(args.quiet),
    )
    if args.chunk_size is not None and args.chunk_size < 1:
        raise IngestError(None, "--chunk-size must be at least 1")
    if args.command == "deepmerge":
        ingest_deepmerge(args.dir, args.out, set=args.set, **options)
        return
    meta = dict(
        dataset=args.dataset,
        band_names=args.band_names,
        pixel_scale_arcsec=args.pixel_scale_arcsec,
        match=args.match,
    )
    if args.command == "npy":
        api.ingest_npy(
            args.x, args.out, args.domain, y=args.y, galaxy_ids=args.galaxy_ids, **meta, **options
        )
    elif args.command == "fits":
        _run_fits(args, meta, options)
    elif args.command == "hdf5":
        api.ingest_hdf5(
            args.file,
            args.out,
            args.domain,
            images_key=args.images_key,
            labels_key=args.labels_key,
            galaxy_id_key=args.galaxy_id_key,
            **meta,
            **options,
        )


def _sigterm(signum, frame):  # pragma: no cover - exercised by a subprocess test
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    old = None
    try:
        # SIGTERM unwinds like an exception, so the writer removes its temporary file
        old = signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not the main thread
        old = None
    try:
        _run(args)
    except IngestError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read or write the checks above did not name
        from galda.errors import os_error_hint

        where = f"{err.filename}: " if err.filename else ""
        print(f"{PROG}: error: {where}{os_error_hint(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no partial output was left at the final path", file=sys.stderr)
        return 130
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return 0
