"""``python -m galda.diagnose``: domain-shift diagnostics before and after training.

    python -m galda.diagnose DATA --out DIR                 # folder with source.h5 and target.h5
    python -m galda.diagnose --source S.h5 --target T.h5 --out DIR
    python -m galda.diagnose RUN [RUN ...] --out DIR        # run folders holding results.json

Exit status: 0 ok, 2 bad input (one line naming the file and the fix), 1 unexpected error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from galda.errors import GaldaError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m galda.diagnose",
        description="Domain-shift diagnostics: DATA folder (before training) or RUN folders "
        "(after training).",
    )
    p.add_argument("paths", nargs="*", help="a DATA folder (source.h5 + target.h5) or RUN folders")
    p.add_argument("--source", help="source domain file (instead of a DATA folder)")
    p.add_argument("--target", help="target domain file (instead of a DATA folder)")
    p.add_argument("--out", required=True, help="output folder for the figure and JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of subsamples and permutations")
    p.add_argument("--permutations", type=int, default=1000, help="MMD permutations (data mode)")
    p.add_argument(
        "--max-per-group",
        type=int,
        default=1000,
        help="images per group in the MMD test / domain classifier (data mode)",
    )
    p.add_argument(
        "--projection",
        choices=("umap", "tsne"),
        default="umap",
        help="2-D projection of the features (run mode)",
    )
    p.add_argument(
        "--saliency-examples",
        type=int,
        default=2,
        help="mergers and non-mergers per domain in the saliency figure (run mode)",
    )
    p.add_argument(
        "--data-dir",
        help="where the runs' data sets live (run mode; default: the "
        "runs' own paths.data_dir, then <repo>/data)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the features (run mode)")
    return p


def _is_run(path: Path) -> bool:
    return (path / "results.json").is_file()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = [Path(p) for p in args.paths]
        if paths and all(_is_run(p) for p in paths):
            if args.source or args.target:
                raise GaldaError("--source/--target are for data mode; RUN folders take neither")
            from galda.diagnose.runs import diagnose_runs

            result = diagnose_runs(
                paths,
                args.out,
                seed=args.seed,
                projection=args.projection,
                n_examples=args.saliency_examples,
                data_dir=args.data_dir,
                device=args.device,
            )
            for name, r in result["runs"].items():
                print(
                    f"{name}: domain-classifier accuracy on features "
                    f"{r['domain_classifier']['heldout_accuracy']:.3f}"
                )
        else:
            if len(paths) > 1:
                bad = next(p for p in paths if not _is_run(p))
                raise GaldaError(
                    f"{bad}: no results.json; give one DATA folder or only RUN folders"
                )
            from galda.diagnose.data import diagnose_data, resolve_domain_paths

            src, tgt = resolve_domain_paths(paths[0] if paths else None, args.source, args.target)
            result = diagnose_data(
                src,
                tgt,
                args.out,
                seed=args.seed,
                n_permutations=args.permutations,
                max_per_group=args.max_per_group,
            )
            for name, t in result["tests"].items():
                print(
                    f"{name}: MMD² = {t['mmd']['mmd2_unbiased']:.4g}, "
                    f"p = {t['mmd']['p_value']:.4g}; domain-classifier accuracy "
                    f"{t['proxy_a_distance']['heldout_accuracy']:.3f} "
                    f"(A-distance {t['proxy_a_distance']['a_distance']:.2f})"
                )
        print(f"wrote {Path(args.out)}")
        return 0
    except GaldaError as err:
        print(f"galda.diagnose: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        logging.getLogger(__name__).exception("galda.diagnose failed")
        print(f"galda.diagnose: unexpected error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
