"""Physical model of the embedded benchmark: what a stamp contains and how it is rendered.

Every number below is a documented choice; see ``docs/simulator.md`` for the full table and the
reasoning (FACTS = ``shared/reference/FACTS.md``, section "Physics of the images").

Instrument (FACTS):
- bands in this channel order: ACS F814W, NIRCam F356W, WFC3 F160W (the order the paper names them);
- 75 x 75 stamps at 0.125"/pixel (the real images were resampled from 0.03-0.065" native pixels to a
  ~9" field of view);
- PSF per band: Moffat (beta = 3) cores of FWHM 0.13" / 0.18" / 0.20" plus faint diffraction spikes
  (2 % of the light in thin bars: 4 spikes for the HST bands, 6 for JWST F356W).

Galaxies at z ~ 2 (FACTS):
- star-forming: Sersic discs, n = 0.6-1.8, half-light radius 0.15-0.6" (1-4 kpc), clumpy star formation
  as ``galsim.RandomKnots`` carrying 5-25 % of the F160W light (bluer than the disc), optional red bulge;
- quiescent: Sersic spheroids, n = 2.5-4.5, with an optional faint disc;
- shapes from a random 3-D orientation (thin-disc / oblate-spheroid projection), colours per galaxy.

Fluxes are physical: AB magnitudes, pixel values in nJy (AB zero point 31.4). The target domain adds
Gaussian sky noise of a 25 mag/arcsec^2 surface-brightness limit, read as "the 1-sigma noise of a
*native* detector pixel (0.03" F814W, 0.065" F356W, 0.06" F160W; FACTS) expressed as a surface
brightness", carried through the flux-conserving resampling to 0.125" pixels (see
:func:`noise_sigma_per_pixel`): 1.36 / 2.95 / 2.72 nJy per output pixel.

Mergers: a primary and a companion at flux ratio 0.1-1 (F160W), 3-D separations from a close double
nucleus (0.05-0.4") to 3", or a coalesced remnant; tidal tails, bridges and shells carry 10-30 % of the
light (debris: Gaussian chains 0.12-0.25" wide in the orbital plane). Non-mergers (and mergers) have an unrelated projected neighbour with a physically motivated
probability, drawn at a different "redshift" (independent colour and size), so two blobs alone do not
decide the class.

A system is defined in 3-D (disc normals, companion offset, tidal debris in the orbital plane); each
camera *view* is a random rotation of it, so views share one ``galaxy_id`` but differ in projected
separation, inclination and position angle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast, overload

import galsim
import numpy as np

# ---------------------------------------------------------------- instrument -----------------------
BAND_NAMES: tuple[str, ...] = ("F814W", "F356W", "F160W")
PSF_FWHM_ARCSEC: tuple[float, ...] = (0.13, 0.18, 0.20)
PSF_MOFFAT_BETA = 3.0
SPIKE_FRACTION = 0.02  # fraction of PSF light in diffraction spikes
SPIKE_ANGLES_DEG: tuple[tuple[float, ...], ...] = ((45.0, 135.0), (0.0, 60.0, 120.0), (45.0, 135.0))
SPIKE_LENGTH_ARCSEC = 0.35  # Gaussian sigma along a spike
SPIKE_AXIS_RATIO = 0.06
PIXEL_SCALE_ARCSEC = 0.125
STAMP_PIXELS = 75
AB_ZEROPOINT_NJY = 31.4  # m_AB = 31.4 - 2.5 log10(f / nJy)
SB_LIMIT_MAG_ARCSEC2 = 25.0
SB_LIMIT_CONVENTION = (
    "1-sigma sky noise of a native detector pixel expressed as a surface brightness, "
    "resampled (flux-conserving) to the output pixels"
)
# Native pixel scales of the instruments the bands come from (FACTS), in BAND_NAMES order.
NATIVE_PIXEL_SCALE_ARCSEC: tuple[float, ...] = (0.03, 0.065, 0.06)
FLUX_UNIT = "nJy/pixel"

GSPARAMS = galsim.GSParams(folding_threshold=5e-3, maxk_threshold=1e-3)

# ---------------------------------------------------------------- population -----------------------
P_QUIESCENT = 0.35  # quiescent fraction of massive z~2 primaries
MAG_RANGE_F160W = (21.0, 24.0)  # primary total F160W magnitude range
MAG_COUNT_SLOPE = 0.3  # dN/dm ~ 10^(0.3 m): more faint than bright galaxies
P_NEIGHBOUR = 0.35  # chance of an unrelated projected neighbour in a 9" stamp
NEIGHBOUR_RADIUS_ARCSEC = (0.6, 4.2)
MERGER_STAGES = ("wide", "close", "nucleus", "post")
MERGER_STAGE_WEIGHTS = (0.30, 0.30, 0.25, 0.15)
STAGE_SEPARATION_3D = {  # arcsec, 3-D separation range per stage
    "wide": (1.2, 3.0),
    "close": (0.4, 1.2),
    "nucleus": (0.05, 0.4),
    "post": (0.0, 0.0),
}
FLUX_RATIO_RANGE = (0.1, 1.0)
TIDAL_FRACTION_RANGE = (0.10, 0.30)
SERSIC_N_STEP = 0.1  # Sersic indices are drawn on a 0.1 grid so GalSim's profile tables are reused

PARAM_NAMES: tuple[str, ...] = (
    *(f"flux_{b}" for b in BAND_NAMES),  # total flux in the stamp, nJy
    *(f"mag_{b}" for b in BAND_NAMES),  # system AB magnitude (primary [+ companion + debris])
    "half_light_radius_arcsec",  # primary's main component
    "sersic_n",  # primary's main component
    "axis_ratio",  # primary's main component in this view
    "quiescent",  # primary is quiescent (1) or star-forming (0)
    "n_components",  # light components in the stamp (Sersic profiles, knot sets, tidal features)
    "n_galaxies",  # galaxies in the stamp (primary, companion, neighbour)
    "flux_ratio",  # merger: companion / primary in F160W; NaN for non-mergers
    "separation_arcsec",  # merger: projected separation in this view (0 = coalesced); NaN otherwise
    "tidal_fraction",  # merger: fraction of the light in tidal features; NaN otherwise
    "merger_stage",  # 0 wide, 1 close, 2 double nucleus, 3 post-merger; NaN for non-mergers
    "has_neighbour",  # unrelated projected neighbour present (0/1)
    "neighbour_flux_ratio",  # neighbour / primary in F160W; NaN when absent
    "neighbour_separation_arcsec",  # NaN when absent
    "view",  # camera view index
)


@overload
def mag_to_njy(mag: float) -> float: ...
@overload
def mag_to_njy(mag: np.ndarray) -> np.ndarray: ...
def mag_to_njy(mag: float | np.ndarray) -> float | np.ndarray:
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_ZEROPOINT_NJY))


def noise_sigma_per_pixel(
    sb_limit: float = SB_LIMIT_MAG_ARCSEC2,
    pixel_scale: float = PIXEL_SCALE_ARCSEC,
    native_pixel_scale: float | None = None,
) -> float:
    """Per-pixel Gaussian sky sigma (nJy) of a surface-brightness limit ``sb_limit`` mag/arcsec^2.

    Convention: the 1-sigma noise of one *native* detector pixel of side p_n, expressed as a surface
    brightness, equals the limit: sigma_n = F(sb_limit) * p_n^2. The real images were resampled from
    native pixels to ``pixel_scale`` = p (FACTS); flux-conserving resampling sums (p/p_n)^2
    independent native pixels, so sigma_p = sigma_n * p / p_n = F(sb_limit) * p_n * p.
    Without ``native_pixel_scale`` the stamp's own pixels are taken as native (sigma = F * p^2).
    For 25 mag/arcsec^2 (F = 363.1 nJy/arcsec^2) and p = 0.125": 1.36 nJy (F814W, p_n = 0.03"),
    2.95 nJy (F356W, 0.065"), 2.72 nJy (F160W, 0.06").
    """
    native = pixel_scale if native_pixel_scale is None else native_pixel_scale
    return float(mag_to_njy(sb_limit)) * native * pixel_scale


def noise_sigma_per_band(sb_limit: float = SB_LIMIT_MAG_ARCSEC2) -> np.ndarray:
    """:func:`noise_sigma_per_pixel` for every band, in ``BAND_NAMES`` order."""
    return np.array(
        [noise_sigma_per_pixel(sb_limit, PIXEL_SCALE_ARCSEC, p) for p in NATIVE_PIXEL_SCALE_ARCSEC]
    )


# ---------------------------------------------------------------- PSFs -----------------------------
_PSF_CACHE: dict[int, galsim.GSObject] = {}


def band_psf(band: int) -> galsim.GSObject:
    """Moffat core plus faint diffraction spikes for band index ``band``."""
    if band not in _PSF_CACHE:
        core = galsim.Moffat(beta=PSF_MOFFAT_BETA, fwhm=PSF_FWHM_ARCSEC[band], gsparams=GSPARAMS)
        angles = SPIKE_ANGLES_DEG[band]
        bars = [
            galsim.Gaussian(sigma=SPIKE_LENGTH_ARCSEC, gsparams=GSPARAMS)
            .shear(q=SPIKE_AXIS_RATIO, beta=a * galsim.degrees)
            .withFlux(SPIKE_FRACTION / len(angles))
            for a in angles
        ]
        # spikes are convolved with the core so their width is set by the optics
        spikes = galsim.Convolve(galsim.Sum(bars), core)
        _PSF_CACHE[band] = galsim.Sum([core.withFlux(1.0 - SPIKE_FRACTION), spikes])
    return _PSF_CACHE[band]


# ---------------------------------------------------------------- system description --------------
@dataclass
class Component:
    """One light component: a unit-flux shape (intrinsic, before projection) and flux per band."""

    kind: str  # "sersic", "knots", "gauss"
    flux: np.ndarray  # (3,) nJy
    pos3d: np.ndarray  # (3,) arcsec, relative to the primary
    hlr: float = 0.0  # half-light radius (sersic/knots) or sigma (gauss), arcsec
    n: float = 1.0
    normal: np.ndarray | None = None  # disc/spheroid symmetry axis (3-D unit vector)
    q0: float = 1.0  # intrinsic thickness (axis ratio seen edge-on)
    n_knots: int = 0
    knot_seed: int = 0


@dataclass
class System:
    label: int
    components: list[Component] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    companion_pos: np.ndarray | None = None  # 3-D, merger only
    neighbour_pos2d: np.ndarray | None = None  # sky plane, unrelated neighbour
    neighbour_components: list[Component] = field(default_factory=list)
    main: Component | None = None  # primary's main component (for params)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _sersic_n(x: float) -> float:
    return round(round(x / SERSIC_N_STEP) * SERSIC_N_STEP, 2)


def _size_for_mag(mag: float, quiescent: bool, rng: np.random.Generator) -> float:
    """z~2 size-luminosity relation: half-light radius 0.15-0.6" (1-4 kpc), quiescent ~1.6x smaller."""
    base = 0.20 if quiescent else 0.32
    r = base * 10 ** (-0.12 * (mag - 22.5)) * 10 ** rng.normal(0.0, 0.12)
    return float(np.clip(r, 0.15, 0.45 if quiescent else 0.6))


def _colours(quiescent: bool, rng: np.random.Generator) -> np.ndarray:
    """AB colours relative to F160W, (F814W - F160W, F356W - F160W, 0).

    z~2: F814W samples the rest-frame UV, F356W the rest-frame near-IR. Star-forming galaxies are blue
    in F814W - F160W (0.4-1.4), quiescent ones red (1.8-3.0); both are brighter in F356W.
    """
    if quiescent:
        return np.array([rng.uniform(1.8, 3.0), rng.uniform(-1.3, -0.7), 0.0])
    return np.array([rng.uniform(0.4, 1.4), rng.uniform(-0.7, -0.2), 0.0])


def _main_sersic(
    pos: np.ndarray,
    re: float,
    normal: np.ndarray,
    rng: np.random.Generator,
    n_range: tuple[float, float],
    thickness_range: tuple[float, float],
) -> Component:
    """The galaxy's main Sérsic body; draws its index, then its thickness, in that order."""
    n = _sersic_n(rng.uniform(*n_range))
    return Component("sersic", np.zeros(3), pos, re, n, normal, rng.uniform(*thickness_range))


def _quiescent_parts(
    pos: np.ndarray, re: float, normal: np.ndarray, rng: np.random.Generator
) -> list[tuple[Component, np.ndarray]]:
    """Spheroid plus, sometimes, a faint disc: (component, relative flux per band), main first."""
    parts = [(_main_sersic(pos, re, normal, rng, (2.5, 4.5), (0.55, 0.9)), np.ones(3))]
    if rng.random() < 0.3:  # faint disc, bluer than the spheroid
        dt = rng.uniform(0.1, 0.3)
        disc = Component(
            "sersic", np.zeros(3), pos, min(re * rng.uniform(1.5, 2.5), 0.9), 1.0, normal, 0.2
        )
        parts.append((disc, dt * np.array([2.0, 0.8, 1.0])))
    return parts


def _star_forming_parts(
    pos: np.ndarray, re: float, normal: np.ndarray, rng: np.random.Generator
) -> list[tuple[Component, np.ndarray]]:
    """Disc, star-forming clumps, sometimes a red bulge: (component, relative flux), main first."""
    main = _main_sersic(pos, re, normal, rng, (0.6, 1.8), (0.15, 0.25))
    parts = [(main, np.ones(3))]
    fk = rng.uniform(0.05, 0.25)  # clumps: bluer than the disc (young stars)
    knots = Component(
        "knots",
        np.zeros(3),
        pos,
        re,
        1.0,
        normal,
        main.q0,
        n_knots=int(rng.integers(5, 26)),
        knot_seed=int(rng.integers(1, 2**31 - 1)),
    )
    parts.append((knots, fk * np.array([2.5, 0.6, 1.0])))
    if rng.random() < 0.5:  # red bulge
        bt = rng.uniform(0.05, 0.3)
        bulge = Component(
            "sersic",
            np.zeros(3),
            pos,
            max(0.1, re * rng.uniform(0.3, 0.5)),
            _sersic_n(rng.uniform(2.5, 4.0)),
            normal,
            0.7,
        )
        parts.append((bulge, bt * np.array([0.3, 1.4, 1.0])))
    return parts


def _galaxy(
    mag160: float,
    quiescent: bool,
    colours: np.ndarray,
    pos: np.ndarray,
    rng: np.random.Generator,
    hlr: float | None = None,
) -> tuple[list[Component], Component]:
    """Components of one galaxy with total F160W magnitude ``mag160`` and the given colours."""
    total = mag_to_njy(mag160 + colours)  # (3,) nJy
    re = _size_for_mag(mag160, quiescent, rng) if hlr is None else hlr
    normal = _unit(rng)
    parts = (_quiescent_parts if quiescent else _star_forming_parts)(pos, re, normal, rng)
    weights = np.array([w for _, w in parts])  # (k, 3)
    weights = weights / weights.sum(axis=0, keepdims=True)
    comps: list[Component] = []
    for (c, _), w in zip(parts, weights):
        c.flux = total * w
        comps.append(c)
    return comps, parts[0][0]


def _arc_points(
    center: np.ndarray, r0: float, r1: float, phi0: float, dphi: float, spacing: float
) -> np.ndarray:
    """Points along a spiral arc in the orbital plane (2-D plane coordinates)."""
    length = abs(dphi) * 0.5 * (r0 + r1) + abs(r1 - r0)
    n = max(4, int(length / spacing))
    t = np.linspace(0.0, 1.0, n)
    r = r0 + (r1 - r0) * t
    phi = phi0 + dphi * t
    return center[None, :] + np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)


def _primary_magnitude(rng: np.random.Generator) -> float:
    """Primary F160W magnitude from a truncated exponential number-count law dN/dm ~ 10^(a m)."""
    lo, hi = MAG_RANGE_F160W
    a = MAG_COUNT_SLOPE * math.log(10)
    u = rng.random()
    return math.log(math.exp(a * lo) + u * (math.exp(a * hi) - math.exp(a * lo))) / a


def _remnant(
    mag: float,
    mag_c: float,
    quiescent: bool,
    colours: np.ndarray,
    comp_col: np.ndarray,
    rng: np.random.Generator,
) -> tuple[list[Component], Component, np.ndarray]:
    """Coalesced remnant: one galaxy with the combined light, sometimes a faint second nucleus.

    Returns the components, the primary's main component and the companion position (the second
    nucleus, or a zero vector when there is none).
    """
    origin = np.zeros(3)
    comps, main = _galaxy(mag, quiescent, colours, origin, rng)
    sep3 = 0.0
    if rng.random() < 0.5:
        nuc_mag = mag_c + 2.5 * np.log10(rng.uniform(2.0, 5.0))  # nucleus keeps 20-50 %
        off = _unit(rng) * rng.uniform(0.05, 0.15)
        nuc = Component("sersic", mag_to_njy(nuc_mag + comp_col), off, 0.08, 2.0, _unit(rng), 0.8)
        comps.append(nuc)
        sep3 = float(np.linalg.norm(off))
    cpos = origin + (_unit(rng) * sep3 if sep3 == 0.0 else comps[-1].pos3d)
    return comps, main, cpos


def _remnant_features(
    prim2: np.ndarray, sense: float, rng: np.random.Generator
) -> list[tuple[np.ndarray, float]]:
    """Post-merger debris: two tails from the remnant and, often, shells on alternating sides."""
    feats: list[tuple[np.ndarray, float]] = []  # (points in plane, relative weight)
    phi0 = rng.uniform(0, 2 * np.pi)
    for k in range(2):
        L = rng.uniform(1.0, 3.0)
        feats.append(
            (
                _arc_points(
                    prim2,
                    0.3,
                    0.3 + L,
                    phi0 + k * np.pi,
                    sense * rng.uniform(1.0, 2.6),
                    0.15,
                ),
                1.0,
            )
        )
    if rng.random() < 0.7:  # shells: arcs at increasing radii on alternating sides
        for k in range(int(rng.integers(2, 5))):
            r = rng.uniform(0.6, 2.5)
            span = rng.uniform(1.0, 2.4)
            feats.append((_arc_points(prim2, r, r, phi0 + k * np.pi - span / 2, span, 0.15), 0.6))
    return feats


def _pair_features(
    prim2: np.ndarray,
    comp2: np.ndarray,
    com2: np.ndarray,
    mu: float,
    stage: str,
    sense: float,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, float]]:
    """Debris of a pair: a tail from each galaxy and, for close/wide pairs, sometimes a bridge."""
    feats: list[tuple[np.ndarray, float]] = []  # (points in plane, relative weight)
    # tails launched from each galaxy, pointing away from the other, trailing the orbit
    for start, weight, phi0 in ((prim2, 1.0, np.pi), (comp2, mu**0.5, 0.0)):
        L = rng.uniform(1.0, 3.0) * (0.6 + 0.4 * weight)
        r0 = float(np.linalg.norm(start - com2)) + 0.15
        feats.append(
            (
                _arc_points(com2, r0, r0 + L, phi0, sense * rng.uniform(0.8, 2.2), 0.15),
                weight,
            )
        )
    if stage in ("close", "wide") and rng.random() < 0.5:  # bridge
        bridge = np.linspace(prim2, comp2, max(4, int(np.linalg.norm(comp2) / 0.15)))[1:-1]
        bridge = (
            bridge
            + np.array([0.0, 1.0])
            * sense
            * 0.25
            * np.sin(np.linspace(0, np.pi, len(bridge)))[:, None]
        )
        if len(bridge):
            feats.append((bridge, 0.5))
    return feats


def _add_tidal_debris(
    comps: list[Component],
    cpos: np.ndarray,
    mu: float,
    f_tidal: float,
    stage: str,
    rng: np.random.Generator,
) -> int:
    """Move ``f_tidal`` of the galaxies' light into Gaussian debris chains in the orbital plane.

    Appends the debris to ``comps`` and returns the number of tidal features.
    """
    galaxy_flux = cast(np.ndarray, sum(c.flux for c in comps))
    for c in comps:
        c.flux = c.flux * (1.0 - f_tidal)
    tidal_flux = galaxy_flux * f_tidal
    e1 = cpos / np.linalg.norm(cpos) if np.linalg.norm(cpos) > 0 else _unit(rng)
    e2 = np.cross(e1, _unit(rng))
    e2 /= np.linalg.norm(e2)
    com2 = np.array([np.dot(cpos, e1), 0.0]) * mu / (1.0 + mu)  # centre of light in the plane
    prim2, comp2 = np.zeros(2), np.array([np.dot(cpos, e1), 0.0])
    sense = rng.choice([-1.0, 1.0])
    if stage == "post":
        feats = _remnant_features(prim2, sense, rng)
    else:
        feats = _pair_features(prim2, comp2, com2, mu, stage, sense, rng)
    wsum = sum(w * len(p) for p, w in feats)
    for pts, w in feats:
        sig = rng.uniform(0.12, 0.25)  # debris width 1-2 kpc
        flux_each = tidal_flux * (w / wsum)
        for j, p in enumerate(pts):
            taper = 1.3 - 0.6 * j / max(1, len(pts) - 1)  # debris fades along a tail
            comps.append(Component("gauss", flux_each * taper, p[0] * e1 + p[1] * e2, sig))
    # renormalise the tapered debris to exactly f_tidal of the light
    gauss = [c for c in comps if c.kind == "gauss"]
    tot_g = sum(c.flux for c in gauss)
    for c in gauss:
        c.flux = c.flux * tidal_flux / tot_g
    return len(feats)


def _merger(
    sysm: System,
    sc: dict[str, float],
    mag: float,
    quiescent: bool,
    colours: np.ndarray,
    rng: np.random.Generator,
) -> tuple[list[Component], Component]:
    """A merger's galaxies and tidal debris; records its stage, flux ratio and geometry."""
    stage_i = int(rng.choice(len(MERGER_STAGES), p=MERGER_STAGE_WEIGHTS))
    stage = MERGER_STAGES[stage_i]
    mu = 10 ** rng.uniform(np.log10(FLUX_RATIO_RANGE[0]), np.log10(FLUX_RATIO_RANGE[1]))
    f_tidal = rng.uniform(*TIDAL_FRACTION_RANGE)
    sc.update(merger_stage=float(stage_i), flux_ratio=mu, tidal_fraction=f_tidal)
    # system magnitude is the sampled one; split between primary and companion
    mag_p = mag + 2.5 * np.log10(1.0 + mu)
    mag_c = mag_p - 2.5 * np.log10(mu)
    comp_q = bool(rng.random() < 0.25)  # companions are mostly gas-rich
    comp_col = _colours(comp_q, rng)
    if stage == "post":
        comps, main, cpos = _remnant(mag, mag_c, quiescent, colours, comp_col, rng)
    else:
        sep3 = rng.uniform(*STAGE_SEPARATION_3D[stage])
        cpos = _unit(rng) * sep3
        comps, main = _galaxy(mag_p, quiescent, colours, np.zeros(3), rng)
        ccomps, _ = _galaxy(mag_c, comp_q, comp_col, cpos, rng)
        comps += ccomps
    sysm.companion_pos = cpos
    n_feats = _add_tidal_debris(comps, cpos, mu, f_tidal, stage, rng)
    sysm.scalars["n_galaxies"] = 1.0 if stage == "post" else 2.0
    sysm.scalars["n_tidal_features"] = float(n_feats)
    return comps, main


def _add_neighbour(
    sysm: System, sc: dict[str, float], mag: float, rng: np.random.Generator
) -> None:
    """Unrelated projected neighbour: class-independent, different "redshift" (colour and size)."""
    if rng.random() < P_NEIGHBOUR:
        lo_r, hi_r = NEIGHBOUR_RADIUS_ARCSEC
        r = math.sqrt(rng.uniform(lo_r**2, hi_r**2))  # uniform in area
        ang = rng.uniform(0, 2 * np.pi)
        pos = np.array([r * math.cos(ang), r * math.sin(ang)])
        nq = bool(rng.random() < 0.3)
        nmag = mag + rng.uniform(-0.5, 3.0)
        ncol = np.array([rng.uniform(-0.2, 3.0), rng.uniform(-1.3, 0.3), 0.0])
        nhlr = float(10 ** rng.uniform(np.log10(0.1), np.log10(0.8)))
        ncomps, _ = _galaxy(nmag, nq, ncol, np.zeros(3), rng, hlr=nhlr)
        sysm.neighbour_components = ncomps
        sysm.neighbour_pos2d = pos
        sc["has_neighbour"] = 1.0
        sc["neighbour_flux_ratio"] = float(10 ** (-0.4 * (nmag - mag)))
        sc["neighbour_separation_arcsec"] = r
    else:
        sc["has_neighbour"] = 0.0


def sample_system(seed: int, galaxy_id: int, label: int) -> System:
    """Draw one physical system; depends only on (seed, galaxy_id, label).

    The draws happen in a fixed order (primary, merger or single galaxy, neighbour), so a system is
    reproducible from its seed alone.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, galaxy_id, label]))
    sysm = System(label=label)
    quiescent = bool(rng.random() < P_QUIESCENT)
    mag = _primary_magnitude(rng)
    colours = _colours(quiescent, rng)
    sc = {k: np.nan for k in PARAM_NAMES}
    sc["quiescent"] = float(quiescent)
    if label == 1:
        comps, main = _merger(sysm, sc, mag, quiescent, colours, rng)
    else:
        comps, main = _galaxy(mag, quiescent, colours, np.zeros(3), rng)
        sysm.scalars["n_galaxies"] = 1.0
        sysm.scalars["n_tidal_features"] = 0.0
    sysm.components = comps
    sysm.main = main
    _add_neighbour(sysm, sc, mag, rng)
    sysm.scalars.update({k: v for k, v in sc.items() if k not in sysm.scalars})
    return sysm


# ---------------------------------------------------------------- rendering ------------------------
# All components are drawn in Fourier space on one fixed grid and multiplied by each band's
# (PSF x pixel) transform, then inverse-FFT'd (GalSim's own drawFFT recipe, split up as its docs
# suggest so each component is evaluated once for all three bands). The real-space period is
# WRAP_PIXELS (16"), wide enough that no light folds back into the 9.4" stamp; k extends to
# 2x the pixel Nyquist frequency so the undersampled F814W PSF aliases correctly. Against GalSim's
# drawImage at high accuracy the rendering differs by < 0.04 nJy/pixel (noise sigma: 5.7 nJy).
WRAP_PIXELS = 128
K_PIXELS = 256
CLUMP_SIGMA_ARCSEC = 0.03  # star-forming clumps (~250 pc at z=2) are unresolved


class _KGrid:
    def __init__(self) -> None:
        self.dk = 2 * np.pi / (WRAP_PIXELS * PIXEL_SCALE_ARCSEC)
        self.bounds = galsim.BoundsI(0, K_PIXELS // 2, -K_PIXELS // 2, K_PIXELS // 2)
        self.kx = np.arange(0, K_PIXELS // 2 + 1) * self.dk
        self.ky = np.arange(-K_PIXELS // 2, K_PIXELS // 2 + 1) * self.dk
        self.k2 = self.kx[None, :] ** 2 + self.ky[:, None] ** 2
        pix = galsim.Pixel(PIXEL_SCALE_ARCSEC, gsparams=GSPARAMS)
        self.psf_k = []
        for b in range(len(BAND_NAMES)):
            im = self.blank()
            galsim.Convolve(band_psf(b), pix)._drawKImage(im)
            self.psf_k.append(im.array.copy())

    def blank(self) -> galsim.Image:
        return galsim.ImageCD(self.bounds, scale=self.dk)

    def draw(self, obj: galsim.GSObject) -> np.ndarray:
        im = self.blank()
        obj._drawKImage(im)
        return im.array

    def points(self, xy: np.ndarray, w: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Transform of a sum of circular Gaussians (weights w, widths sigma) at positions xy."""
        out = np.zeros(self.k2.shape, dtype=np.complex128)
        for s in np.unique(sigma):
            m = sigma == s
            ey = np.exp(-1j * np.outer(self.ky, xy[m, 1])) * w[m][None, :]
            ex = np.exp(-1j * np.outer(xy[m, 0], self.kx))
            out += (ey @ ex) * np.exp(-0.5 * s * s * self.k2)
        return out

    def to_image(self, kimage: np.ndarray, band: int) -> np.ndarray:
        kim = self.blank()
        kim.array[:] = kimage * self.psf_k[band]
        half = STAMP_PIXELS // 2
        img = galsim.ImageD(galsim.BoundsI(-half, half, -half, half), scale=PIXEL_SCALE_ARCSEC)
        galsim.GSObject.drawFFT_finish(None, img, kim, WRAP_PIXELS, False)
        return img.array


_KGRID: _KGrid | None = None


def _kgrid() -> _KGrid:
    global _KGRID
    if _KGRID is None:
        _KGRID = _KGrid()
    return _KGRID


def _projected_shape(c: Component, rot: np.ndarray) -> tuple[float, float]:
    """Observed axis ratio and position angle (rad) of an oblate body seen along z after ``rot``."""
    nrm = rot @ c.normal
    cos_i = min(1.0, abs(nrm[2]))
    q = math.sqrt(cos_i**2 + (c.q0**2) * (1.0 - cos_i**2))
    pa = math.atan2(nrm[1], nrm[0]) + math.pi / 2  # major axis is perpendicular to the normal
    return max(q, 0.05), pa


def _component_k(
    grid: _KGrid, c: Component, rot: np.ndarray, offset2d: np.ndarray
) -> tuple[np.ndarray, float]:
    """Unit-flux Fourier transform of ``c`` in this view, and its observed axis ratio."""
    pos = (rot @ c.pos3d)[:2] + offset2d
    q, pa = _projected_shape(c, rot) if c.normal is not None else (1.0, 0.0)
    if c.kind == "sersic":
        obj = galsim.Sersic(c.n, half_light_radius=c.hlr, gsparams=GSPARAMS)
        obj = obj.shear(q=q, beta=pa * galsim.radians).shift(float(pos[0]), float(pos[1]))
        return grid.draw(obj), q
    if c.kind == "knots":
        pts = galsim.RandomKnots(
            c.n_knots,
            half_light_radius=c.hlr,
            rng=galsim.BaseDeviate(c.knot_seed),
            gsparams=GSPARAMS,
        ).points
        mat = galsim.Shear(q=q, beta=pa * galsim.radians).getMatrix()
        xy = pts @ mat.T + pos[None, :]
        n = len(xy)
        return grid.points(xy, np.full(n, 1.0 / n), np.full(n, CLUMP_SIGMA_ARCSEC)), q
    raise ValueError(c.kind)


def _light_groups(
    grid: _KGrid, sysm: System, rot: np.ndarray, nb_rot: np.ndarray, jitter: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Unit-flux transforms and per-band fluxes of every light group in one view.

    A group is one galaxy component, all the tidal debris together, or one neighbour component.
    Also returns the observed axis ratio of the primary's main component.
    """
    ks: list[np.ndarray] = []
    fluxes: list[np.ndarray] = []
    main_q = 1.0
    debris = [c for c in sysm.components if c.kind == "gauss"]
    for c in sysm.components:
        if c.kind == "gauss":
            continue
        k, q = _component_k(grid, c, rot, jitter)
        if c is sysm.main:
            main_q = q
        ks.append(k)
        fluxes.append(c.flux)
    if debris:  # tidal debris shares one colour: one transform for all of it
        tot = cast(np.ndarray, sum(c.flux for c in debris))
        xy = np.array([(rot @ c.pos3d)[:2] + jitter for c in debris])
        w = np.array([c.flux[2] / tot[2] for c in debris])
        ks.append(grid.points(xy, w, np.array([c.hlr for c in debris])))
        fluxes.append(tot)
    if sysm.neighbour_pos2d is not None:
        # unrelated neighbour: own orientation; its sky offset turns with the camera roll
        roll = math.atan2(rot[1, 0], rot[0, 0])
        cr, sr = math.cos(roll), math.sin(roll)
        p = sysm.neighbour_pos2d
        npos = np.array([cr * p[0] - sr * p[1], sr * p[0] + cr * p[1]]) + jitter
        for c in sysm.neighbour_components:
            k, _ = _component_k(grid, c, nb_rot, npos)
            ks.append(k)
            fluxes.append(c.flux)
    return ks, fluxes, main_q


def _view_params(
    sysm: System, total: np.ndarray, rot: np.ndarray, main_q: float, view: int
) -> dict[str, float]:
    """Catalogue parameters of one view; ``total`` is the stamp's flux per band (nJy)."""
    params = {k: float(sysm.scalars.get(k, np.nan)) for k in PARAM_NAMES}
    prim = cast(np.ndarray, sum(c.flux for c in sysm.components))
    for b, name in enumerate(BAND_NAMES):
        params[f"flux_{name}"] = float(total[b])
        params[f"mag_{name}"] = float(AB_ZEROPOINT_NJY - 2.5 * np.log10(prim[b]))
    m = sysm.main
    assert m is not None  # sample_system always sets the primary's main component
    params.update(
        half_light_radius_arcsec=m.hlr,
        sersic_n=m.n,
        axis_ratio=main_q,
        n_components=float(
            sum(1 for c in sysm.components if c.kind != "gauss")
            + len(sysm.neighbour_components)
            + sysm.scalars["n_tidal_features"]
        ),
        view=float(view),
    )
    if sysm.label == 1:
        params["separation_arcsec"] = float(np.linalg.norm((rot @ sysm.companion_pos)[:2]))
    params["n_galaxies"] = sysm.scalars["n_galaxies"] + (
        1.0 if sysm.neighbour_pos2d is not None else 0.0
    )
    return params


def render_view(
    sysm: System, seed: int, galaxy_id: int, view: int
) -> tuple[np.ndarray, dict[str, float]]:
    """Noiseless, PSF-convolved (3, 75, 75) float32 image of one view (nJy/pixel) and its params."""
    grid = _kgrid()
    vrng = np.random.default_rng(np.random.SeedSequence([seed, 2, galaxy_id, view]))
    rot = _random_rotation(vrng)
    jitter = vrng.uniform(-0.5, 0.5, size=2) * PIXEL_SCALE_ARCSEC  # centring error of the cutout
    nb_rot = _random_rotation(vrng)
    ks, fluxes, main_q = _light_groups(grid, sysm, rot, nb_rot, jitter)
    kstack = np.stack(ks)  # (n_groups, ky, kx) complex
    F = np.stack(fluxes)  # (n_groups, 3) nJy
    flat = kstack.reshape(len(ks), -1).view(np.float64)
    kband = (F.T @ flat).view(np.complex128).reshape((len(BAND_NAMES), *kstack.shape[1:]))
    img = np.empty((len(BAND_NAMES), STAMP_PIXELS, STAMP_PIXELS), dtype=np.float32)
    for b in range(len(BAND_NAMES)):
        img[b] = grid.to_image(kband[b], b)
    return img, _view_params(sysm, F.sum(axis=0), rot, main_q, view)


def add_noise(
    img: np.ndarray, sigma: np.ndarray | Sequence[float], seed: int, galaxy_id: int, view: int
) -> np.ndarray:
    """Target image: ``img`` plus Gaussian sky noise; depends only on (seed, galaxy_id, view)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, galaxy_id, view]))
    noise = rng.standard_normal(img.shape) * np.asarray(sigma, dtype=float)[:, None, None]
    return (img + noise).astype(np.float32)
