"""Embedded benchmark: a GalSim simulator of merging and non-merging galaxies at z ~ 2 in two domains.

``simulate_domains(preset, out, seed, workers, paired, ...)`` writes ``out/source.h5`` (PSF-convolved,
noiseless: "pristine") and ``out/target.h5`` (the same systems plus Gaussian sky noise of a
25 mag/arcsec^2 surface-brightness limit: "noisy") in the :mod:`galda.data.h5format` layout and
returns their paths. Command line: ``python -m galda.simulate --preset tiny --out DIR --seed 1 --workers 2``.

The physics and every number it uses (from shared/reference/FACTS.md, "Physics of the images") are
documented in :mod:`galda.simulate.physics` and ``docs/simulator.md``.
"""

from galda.simulate.generate import (
    PRESETS,
    TARGET_ID_OFFSET,
    default_out,
    simulate_domains,
    summarize,
)
from galda.simulate.physics import BAND_NAMES, PARAM_NAMES, noise_sigma_per_pixel

__all__ = [
    "BAND_NAMES",
    "PARAM_NAMES",
    "PRESETS",
    "TARGET_ID_OFFSET",
    "default_out",
    "noise_sigma_per_pixel",
    "simulate_domains",
    "summarize",
]
