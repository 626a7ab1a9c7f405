"""``python -m galda.simulate key=value ...``: render source.h5 and target.h5.

Keys (defaults): preset=small, out=data/simulated/<preset>-seed<seed>, seed=1, workers=1,
paired=true, progress=true, overwrite=false, views / n_mergers / n_nonmergers (null = the preset's),
sb_limit=25.0 (mag/arcsec^2).
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

DEFAULTS = {
    "preset": "small",
    "out": None,
    "seed": 1,
    "workers": 1,
    "paired": True,
    "progress": True,
    "overwrite": False,
    "views": None,
    "n_mergers": None,
    "n_nonmergers": None,
    "sb_limit": 25.0,
}


def _parse(argv: list[str]):
    bad = [a for a in argv if "=" not in a or a.startswith("-")]
    if bad:
        raise ValueError(
            f"arguments must be key=value overrides, got {bad}; keys: {', '.join(DEFAULTS)}"
        )
    over = OmegaConf.from_dotlist([a[2:] if a.startswith("++") else a.lstrip("+") for a in argv])
    unknown = sorted(set(over.keys()) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(DEFAULTS)}")
    base = OmegaConf.create(DEFAULTS)
    return OmegaConf.to_container(OmegaConf.merge(base, over))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = _parse(argv)
        from galda.simulate import PRESETS, simulate_domains, summarize

        if cfg["preset"] not in PRESETS:
            raise ValueError(
                f"unknown preset {cfg['preset']!r}; choose one of {', '.join(PRESETS)}"
            )
        src, tgt = simulate_domains(**cfg)
    except (ValueError, FileExistsError, TypeError) as err:
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
