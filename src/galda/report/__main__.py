"""``python -m galda.report DIR [DIR ...]`` (also the ``galda-report`` script)."""

from __future__ import annotations

import argparse
import os
import sys

from galda.errors import GaldaError, os_error_hint

from .collect import parse_seeds
from .core import build_report

# 0 success; 2 bad input (no results, an unwritable --out, bad arguments) and, with --strict,
# any unreadable results.json or missing / failed seed; 1 is left to unexpected errors.
EXIT_NO_RESULTS = 2
EXIT_INCOMPLETE = 2


def _seeds(text: str) -> list[int]:
    try:
        return parse_seeds(text)  # type: ignore[return-value]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m galda.report",
        description="Collect results.json files (single runs or multiruns) and rebuild Table 1 "
        "(Markdown, CSV, LaTeX), the full metrics table and Figure 1.",
    )
    p.add_argument(
        "dirs", nargs="+", metavar="DIR", help="folders searched recursively for results.json"
    )
    p.add_argument("--out", "-o", default="report", help="output folder (default: ./report)")
    p.add_argument(
        "--paper",
        action="store_true",
        help="also print/write the paper's numbers beside ours (table1_vs_paper.*)",
    )
    p.add_argument(
        "--seeds",
        type=_seeds,
        default=None,
        metavar="SEEDS",
        help="expected seeds of every group, e.g. 1-10 or 1,2,3 (default: per group, "
        "those its sweep asked for or that ran); results for other seeds are "
        "ignored",
    )
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip Figure 1")
    p.add_argument(
        "--validators",
        action="store_true",
        help="instead: the validator study (every epoch's val/validator/* against "
        "val/target/acc, which only scores them) from each run's csv/metrics.csv",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help=f"exit with status {EXIT_INCOMPLETE} when any results.json is unreadable "
        "or any expected seed is missing or failed",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.validators:
        from . import validators

        try:
            return validators.main(args)
        except OSError as exc:
            where = exc.filename or args.out
            print(
                f"galda.report: error: {where}: cannot write: {os_error_hint(exc)} (--out)",
                file=sys.stderr,
            )
            return EXIT_NO_RESULTS
    try:
        rep = build_report(
            args.dirs, args.out, paper=args.paper, expected_seeds=args.seeds, figures=args.figures
        )
    except GaldaError as exc:
        print(f"galda.report: error: {exc}", file=sys.stderr)
        return EXIT_NO_RESULTS
    print(rep["markdown"])
    if rep["paper_markdown"]:
        print(rep["paper_markdown"])
    n_ok = sum(r.complete for r in rep["runs"])
    print(f"{len(rep['runs'])} results read ({n_ok} complete) in {len(rep['groups'])} groups.")
    print(f"Written to {os.path.abspath(args.out)}:")
    for path in rep["files"].values():
        print(f"  {path}")
    if rep["smoke"]:
        print(
            f"galda.report: {len(rep['smoke'])} smoke run(s) left out of every table "
            "(see the end of table1.md)",
            file=sys.stderr,
        )
    for problem in rep["problems"]:
        print(f"galda.report: unreadable: {problem}", file=sys.stderr)
    if rep["incomplete"]:
        print(
            f"galda.report: {len(rep['incomplete'])} group(s) have missing or failed seeds "
            "(see Notes).",
            file=sys.stderr,
        )
    if args.strict and (rep["incomplete"] or rep["problems"]):
        return EXIT_INCOMPLETE
    return 0


if __name__ == "__main__":
    sys.exit(main())
