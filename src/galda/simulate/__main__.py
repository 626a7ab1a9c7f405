"""``python -m galda.simulate [--preset small] [--out DIR] ...``: render source.h5 and target.h5.

Exit codes (as every galda command): 0 done, 2 bad input or settings (one line on stderr),
1 unexpected error.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    from galda.simulate import PRESETS

    p = argparse.ArgumentParser(
        prog="python -m galda.simulate",
        description="Render the simulated source (pristine) and target (noisy) domain files.",
    )
    p.add_argument(
        "--preset",
        default="small",
        choices=sorted(PRESETS),
        help="size of the data set (default: small)",
    )
    p.add_argument(
        "--out", default=None, help="output folder (default: data/simulated/<preset>-seed<seed>)"
    )
    p.add_argument("--seed", type=int, default=1, help="data seed (default: 1)")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (default: 1)")
    p.add_argument(
        "--unpaired",
        dest="paired",
        action="store_false",
        help="draw the target systems independently of the source ones",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--views", type=int, default=None, help="views per system (preset's)")
    p.add_argument("--n-mergers", type=int, default=None, help="merger count (preset's)")
    p.add_argument("--n-nonmergers", type=int, default=None, help="non-merger count (preset's)")
    p.add_argument(
        "--sb-limit",
        type=float,
        default=None,
        help="target surface-brightness limit, mag/arcsec^2 (default 25.0)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # bad flags: argparse prints usage and exits 2
    options = {k: v for k, v in vars(args).items() if v is not None or k == "out"}
    try:
        from galda.simulate import simulate_domains, summarize

        src, tgt = simulate_domains(**options)
    except (ValueError, FileExistsError, TypeError, PermissionError) as err:
        print(f"galda.simulate: error: {err}", file=sys.stderr)
        return 2
    print(f"source: {src}\ntarget: {tgt}")
    stats = {d: summarize(p) for d, p in (("source", src), ("target", tgt))}
    s = stats["source"]
    print(
        f"images per domain: {s['n']} ({s['n_mergers']} mergers, {s['n_nonmergers']} non-mergers, "
        f"{s['n_galaxies']} systems)"
    )
    for i, band in enumerate(s["band_names"]):
        ss, ts = s["std"][i], stats["target"]["std"][i]
        print(
            f"  {band}: std source {ss:.3f}  target {ts:.3f}  ratio {ts / ss:.3f}  "
            f"noise sigma {stats['target']['noise_sigma'][i]:.3f} nJy/pixel"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
