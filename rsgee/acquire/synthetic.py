"""The synthetic scene: a seeded procedural world that stands in for Earth Engine offline.

The chain mirrors how the real sources relate, so that models trained on it have something to learn:
fractal terrain in metres → Dynamic World land cover driven by elevation, slope and a valley-wetness
proxy → Sentinel-2 L2A reflectance from per-class spectra, lit by the sun over the terrain and
cloud-masked → Sentinel-1 backscatter from per-class means, modulated by the local incidence angle,
speckled per acquisition, averaged in linear power and converted to dB. Each source comes out as the
Earth Engine export would deliver it (bands, dtypes, units and nodata of ``catalog.yaml``).

**World-coherent.** Every value is a function of (seed, EPSG, the pixel's world coordinates) only:
noise is hashed from integer lattice coordinates of the world (never from the window), terrain
derivatives come from a one-pixel margin computed the same way, and no step looks at the window as a
whole. So overlapping AOIs agree where they overlap, and an AOI generated tile by tile is
byte-identical to the same AOI generated at once.

**Bit-reproducible.** The per-pixel chain uses integer hashing and IEEE-exact arithmetic only
(+ − × ÷ √, floor, comparisons), element by element in a fixed order, in float64: no transcendental
ufunc (whose SIMD and scalar code paths may differ in the last bit) and no reduction across pixels.
The dB conversion uses :func:`power_to_db`, an arithmetic logarithm, for the same reason.
"""

from __future__ import annotations

import datetime as dt
import math
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from affine import Affine

from rsgee.acquire import WINDOW
from rsgee.errors import RsgeeError
from rsgee.grid import PIXEL_M, TILE_PX, Grid, Tile
from rsgee.memory import keep_freed_memory

SOURCES = ("dem", "lulc", "s2", "s1")

#: Dynamic World V1 classes, in label order.
CLASSES = (
    "water", "trees", "grass", "flooded_vegetation", "crops", "shrub_and_scrub", "built", "bare", "snow_and_ice",
)
WATER, TREES, GRASS, FLOODED, CROPS, SHRUB, BUILT, BARE, SNOW = range(9)

#: Sentinel-2 L2A bands (Earth Engine names) the scene can deliver.
S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
#: Surface reflectance (0–1) per class (rows, in :data:`CLASSES` order) and band (columns, in
#: :data:`S2_BANDS` order): typical summer spectra. Vegetation has the red edge (NIR ≫ red), water
#: is dark and darkest in the NIR/SWIR, snow is bright in the visible/NIR and dark in the SWIR.
S2_SPECTRA = np.array(
    [
        # B1     B2     B3     B4     B5     B6     B7     B8     B8A    B9     B11    B12
        [0.050, 0.045, 0.042, 0.028, 0.022, 0.018, 0.016, 0.015, 0.013, 0.010, 0.006, 0.004],  # water
        [0.020, 0.025, 0.045, 0.026, 0.075, 0.200, 0.260, 0.290, 0.300, 0.290, 0.150, 0.070],  # trees
        [0.030, 0.038, 0.075, 0.055, 0.120, 0.250, 0.300, 0.320, 0.330, 0.320, 0.230, 0.130],  # grass
        [0.028, 0.032, 0.052, 0.040, 0.075, 0.150, 0.180, 0.190, 0.195, 0.170, 0.100, 0.050],  # flooded_vegetation
        [0.030, 0.040, 0.080, 0.050, 0.125, 0.290, 0.360, 0.390, 0.400, 0.380, 0.240, 0.130],  # crops
        [0.045, 0.055, 0.085, 0.095, 0.135, 0.190, 0.220, 0.240, 0.250, 0.240, 0.280, 0.190],  # shrub_and_scrub
        [0.100, 0.110, 0.125, 0.135, 0.145, 0.155, 0.160, 0.170, 0.172, 0.160, 0.190, 0.170],  # built
        [0.110, 0.130, 0.170, 0.200, 0.220, 0.240, 0.255, 0.265, 0.275, 0.270, 0.330, 0.280],  # bare
        [0.850, 0.850, 0.830, 0.800, 0.780, 0.750, 0.720, 0.680, 0.640, 0.500, 0.060, 0.040],  # snow_and_ice
    ]
)
#: Bare soil between the rows of a crop parcel; parcels mix it in by their greenness.
SOIL_SPECTRUM = np.array([0.080, 0.100, 0.140, 0.180, 0.200, 0.220, 0.235, 0.250, 0.260, 0.255, 0.320, 0.270])

S1_BANDS = ("VV", "VH")
#: Mean backscatter (dB) per class on flat ground at the nominal incidence angle: VV, VH.
S1_MEAN_DB = np.array(
    [
        [-20.0, -27.0],  # water
        [-7.0, -13.0],  # trees
        [-11.0, -18.0],  # grass
        [-5.0, -14.0],  # flooded_vegetation (double bounce)
        [-9.0, -16.0],  # crops
        [-9.0, -16.0],  # shrub_and_scrub
        [-2.0, -9.0],  # built
        [-13.0, -21.0],  # bare
        [-14.0, -22.0],  # snow_and_ice
    ]
)

SUN_AZIMUTH_DEG = 150.0
SUN_ELEVATION_DEG = 45.0
#: Share of light that is diffuse (reaches slopes facing away from the sun).
DIFFUSE_FRACTION = 0.25
#: The radar looks east (sensor to the west, as on an ascending pass), at this nominal incidence.
RADAR_LOOK_AZIMUTH_DEG = 90.0
RADAR_INCIDENCE_DEG = 37.0
#: Equivalent number of looks of one Sentinel-1 IW GRD acquisition (speckle is gamma(ENL, 1/ENL)).
ENL = 4.4
DB_FLOOR = -50.0
#: Sentinel-1 repeat cycle (one satellite), used to count acquisitions in a date window.
S1_REPEAT_DAYS = 12
#: Bumped whenever a recipe changes the pixels, so that older synthetic exports are not taken as current.
SCENE_VERSION = 1
#: The largest window one call generates (memory grows ~0.4 kB per pixel); larger AOIs go tile by tile.
MAX_WINDOW_PX = 2048 * 2048

_NATIVE_NODATA = {"dem": math.nan, "lulc": 255, "s2": 0, "s1": math.nan}


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def synthesize(
    epsg: int,
    transform: Affine,
    width: int,
    height: int,
    *,
    seed: int = 0,
    cloud_cover: float = 0.0,
    s2_bands: Sequence[str] = ("B2", "B3", "B4", "B8"),
    s1_bands: Sequence[str] = S1_BANDS,
    n_s1_images: int = 6,
    sources: Sequence[str] = SOURCES,
) -> dict[str, np.ndarray]:
    """The synthetic scene on a 10 m north-up UTM window, as the Earth Engine export would deliver it.

    Args:
        epsg: UTM EPSG code of the window (326zz / 327zz); part of the world's identity.
        transform: affine transform of the window: 10 m pixels, north up, origin on the 10 m grid
            (as :attr:`rsgee.grid.Grid.transform` and :attr:`rsgee.grid.Tile.transform` are).
        width, height: window size in pixels.
        seed: which world.
        cloud_cover: expected fraction (0–1) of Sentinel-2 pixels left cloud-masked (nodata 0 in all
            bands), as a Cloud Score+ masked median leaves pixels that were cloudy in every image.
            Clouds are km-sized patches, so one small window can hold more or less than that.
        s2_bands: Earth Engine names of the Sentinel-2 bands, any of :data:`S2_BANDS`.
        s1_bands: Sentinel-1 polarisations, any of :data:`S1_BANDS`.
        n_s1_images: Sentinel-1 acquisitions averaged (in linear power) into the composite.
        sources: which of :data:`SOURCES` to compute (skipping some saves time).

    Returns:
        One ``(bands, height, width)`` array per requested source: ``dem`` float32 metres (nodata
        NaN), ``lulc`` uint8 Dynamic World classes (nodata 255), ``s2`` uint16 reflectance × 10000
        (nodata 0), ``s1`` float32 dB (nodata NaN, floored at −50 dB).
    """
    _check_sources(sources)
    s2_idx = _band_indices(s2_bands, S2_BANDS, "Sentinel-2") if "s2" in sources else []
    s1_idx = _band_indices(s1_bands, S1_BANDS, "Sentinel-1") if "s1" in sources else []
    if isinstance(cloud_cover, bool) or not isinstance(cloud_cover, (int, float)) or not 0.0 <= cloud_cover <= 1.0:
        raise RsgeeError(f"cloud_cover must be a fraction within 0…1, got {cloud_cover!r}")
    _check_count(n_s1_images, "n_s1_images")
    scene = _Scene(epsg, transform, width, height, seed)
    out: dict[str, np.ndarray] = {}
    if "dem" in sources:
        out["dem"] = scene.terrain["z"][None].astype(np.float32)
    if "lulc" in sources:
        out["lulc"] = scene.land_cover[None].copy()
    if "s2" in sources:
        out["s2"] = scene.s2([S2_BANDS[i] for i in s2_idx], float(cloud_cover))
    if "s1" in sources:
        bands = [S1_BANDS[i] for i in s1_idx]
        out["s1"] = power_to_db(scene.s1_composite(bands, n_s1_images)).astype(np.float32)
    return out


def s1_acquisitions(
    epsg: int,
    transform: Affine,
    width: int,
    height: int,
    *,
    seed: int = 0,
    s1_bands: Sequence[str] = S1_BANDS,
    n_s1_images: int = 6,
) -> tuple[np.ndarray, np.ndarray]:
    """The Sentinel-1 images behind the composite, in linear power, to check how it is made.

    Returns:
        ``(images, expected)``: images is ``(n_s1_images, bands, height, width)`` float64 σ0 of each
        acquisition (speckled), expected the ``(bands, height, width)`` speckle-free σ0 they scatter
        around. :func:`synthesize`'s ``s1`` is ``power_to_db(images.mean(axis=0))`` (its mean is
        summed acquisition by acquisition, so it can differ from numpy's pairwise mean in the last bit).
    """
    idx = _band_indices(s1_bands, S1_BANDS, "Sentinel-1")
    _check_count(n_s1_images, "n_s1_images")
    scene = _Scene(epsg, transform, width, height, seed)
    bands = [S1_BANDS[i] for i in idx]
    expected = scene.s1_expected(bands)
    images = np.stack([expected * scene.speckle(bands, k) for k in range(n_s1_images)])
    return images, expected


def power_to_db(power: np.ndarray, floor_db: float = DB_FLOOR) -> np.ndarray:
    """10·log10 of linear power, clamped at ``floor_db``; NaN stays NaN.

    Computed with an arithmetic logarithm (frexp + an atanh series, accurate to ~1e-15) so that the
    result does not depend on which SIMD path numpy picks for an array: see the module docstring.
    """
    power = np.asarray(power, dtype=np.float64)
    floor_linear = 10.0 ** (floor_db / 10.0)
    nan = np.isnan(power)
    x = np.where(nan | (power < floor_linear), floor_linear, power)
    mantissa, exponent = np.frexp(x)  # x = m·2^e, m in [0.5, 1)
    low = mantissa < _SQRT_HALF
    mantissa = np.where(low, mantissa * 2.0, mantissa)  # now in [√½, √2)
    exponent = exponent - low
    t = (mantissa - 1.0) / (mantissa + 1.0)  # |t| ≤ 0.172
    t2 = t * t
    series = np.full_like(t, 1.0 / 21.0)
    for k in range(19, 0, -2):
        series = series * t2 + 1.0 / k
    ln = 2.0 * t * series + exponent * _LN2
    db = np.maximum(ln * (10.0 / _LN10), floor_db)
    db[x == floor_linear] = floor_db
    db[nan] = np.nan
    return db


def s1_image_count(start: dt.date, end: dt.date) -> int:
    """Sentinel-1 acquisitions of one orbit in ``[start, end)``: one every 12 days, at least one."""
    return max(1, (end - start).days // S1_REPEAT_DAYS)


@dataclass(frozen=True)
class SyntheticSource:
    """The synthetic scene as a block source for :func:`rsgee.acquire.export.export_aois`.

    Pixels depend on the seed, the cloud cover and the number of Sentinel-1 images (from the date
    window); the dates themselves only set that count, since the scene has no seasons.
    """

    seed: int = 0
    cloud_cover: float = 0.0
    start: dt.date = WINDOW[0]
    end: dt.date = WINDOW[1]
    workers: int = 1  # processes computing tiles; the pixels never depend on it

    name = "synthetic"

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise RsgeeError(f"seed must be an integer, got {self.seed!r}")
        if not 0.0 <= self.cloud_cover <= 1.0:
            raise RsgeeError(f"cloud_cover must be a fraction within 0…1, got {self.cloud_cover!r}")
        if self.start >= self.end:
            raise RsgeeError(f"the date window {self.start}…{self.end} is empty; start must be before end")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise RsgeeError(f"workers must be a whole number ≥ 1, got {self.workers!r}")

    @property
    def n_s1_images(self) -> int:
        return s1_image_count(self.start, self.end)

    def request(self) -> dict:
        return {
            "source": self.name,
            "scene_version": SCENE_VERSION,
            "seed": self.seed,
            "cloud_cover": self.cloud_cover,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "n_s1_images": self.n_s1_images,
        }

    def blocks(self, grid: Grid, sources, workdir=None) -> Iterator[tuple[Tile, dict[str, np.ndarray]]]:
        """Every tile of ``grid`` with one array per catalog source, in each source's catalog dtype.

        Each tile takes a fraction of a second to compute, so nothing is kept in ``workdir``. With
        ``workers`` > 1, tiles are computed in that many processes, a bounded window of them ahead of the
        writer, and yielded in grid order: every tile's pixels depend only on its position, so the files
        are byte-identical to one process's.
        """
        specs = list(sources)
        for spec in specs:
            if spec.name not in SOURCES:
                raise RsgeeError(
                    f"the synthetic source cannot make catalog source '{spec.name}'; it makes {', '.join(SOURCES)}"
                )
            if spec.name in ("dem", "lulc") and len(spec.bands) != 1:
                raise RsgeeError(
                    f"the synthetic source makes one {spec.name} band, the catalog asks for {len(spec.bands)}"
                )
        bands = {spec.name: spec.ee_bands for spec in specs}
        job = (self.seed, self.cloud_cover, bands.get("s2", ("B2",)), bands.get("s1", S1_BANDS), self.n_s1_images,
               tuple(specs))
        tiles = list(grid.tiles())
        if self.workers == 1 or len(tiles) < 2:
            for tile in tiles:
                yield tile, _tile_arrays(job, tile)
            return
        import multiprocessing

        from rsgee.workers import process_pool

        ahead = 4 * self.workers  # tiles computed ahead of the writer: memory stays bounded
        spawn = multiprocessing.get_context("spawn")  # no fork of a parent that may hold torch threads
        with process_pool(self.workers, mp_context=spawn, initializer=keep_freed_memory) as pool:
            pending = [pool.submit(_tile_arrays, job, tile) for tile in tiles[:ahead]]
            for i, tile in enumerate(tiles):
                arrays = pending[i].result()
                pending[i] = None  # let the arrays go once written
                if i + ahead < len(tiles):
                    pending.append(pool.submit(_tile_arrays, job, tiles[i + ahead]))
                yield tile, arrays


def _tile_arrays(job: tuple, tile: Tile) -> dict[str, np.ndarray]:
    """One tile of the scene, every requested source in its catalog dtype (runs in worker processes too)."""
    seed, cloud_cover, s2_bands, s1_bands, n_s1_images, specs = job
    arrays = synthesize(tile.epsg, tile.transform, TILE_PX, TILE_PX, seed=seed, cloud_cover=cloud_cover,
                        s2_bands=s2_bands, s1_bands=s1_bands, n_s1_images=n_s1_images,
                        sources=[spec.name for spec in specs])
    return {spec.name: _as_catalog_dtype(arrays[spec.name], spec) for spec in specs}


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _check_sources(sources: Sequence[str]) -> None:
    if isinstance(sources, str) or not len(sources):
        raise RsgeeError(f"sources must be a non-empty list of names from {', '.join(SOURCES)}, got {sources!r}")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise RsgeeError(f"unknown synthetic source(s) {', '.join(map(str, unknown))}; choose from {', '.join(SOURCES)}")


def _band_indices(bands: Sequence[str], known: tuple[str, ...], sensor: str) -> list[int]:
    if isinstance(bands, str) or not len(bands):
        raise RsgeeError(f"{sensor} bands must be a non-empty list of band names such as {', '.join(known[:2])}")
    for band in bands:
        if band not in known:
            raise RsgeeError(f"{sensor} band '{band}' is not one the synthetic scene has ({', '.join(known)})")
    return [known.index(b) for b in bands]


def _check_count(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RsgeeError(f"{name} must be a whole number ≥ 1, got {value!r}")


def _as_catalog_dtype(block: np.ndarray, spec) -> np.ndarray:
    """Cast a block to the catalog's dtype and nodata (where the catalog departs from the defaults)."""
    dtype = spec.numpy_dtype
    if block.dtype == dtype:
        return block
    native = _NATIVE_NODATA[spec.name]
    missing = np.isnan(block) if isinstance(native, float) and math.isnan(native) else block == native
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(np.nan_to_num(block.astype(np.float64))), info.min, info.max).astype(dtype)
    else:
        out = block.astype(dtype)
    out[missing] = spec.nodata
    return out


def _window_origin(transform, width: int, height: int) -> tuple[int, int]:
    """World pixel index (column east, row north) of the window's south-west pixel, after checks."""
    for value, name in ((width, "width"), (height, "height")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise RsgeeError(f"window {name} must be a whole number of pixels ≥ 1, got {value!r}")
    if width * height > MAX_WINDOW_PX:
        raise RsgeeError(
            f"a {width}×{height} window is too large for one call (max {MAX_WINDOW_PX} px); generate it tile by tile"
        )
    try:
        a, b, c, d, e, f = (float(v) for v in list(transform)[:6])
    except (TypeError, ValueError):
        raise RsgeeError(f"transform must be an affine.Affine, got {transform!r}") from None
    if (a, b, d, e) != (PIXEL_M, 0.0, 0.0, -PIXEL_M):
        raise RsgeeError(f"the synthetic scene is made on {PIXEL_M} m north-up pixels, got a transform of {a}×{e} m")
    if c % PIXEL_M or f % PIXEL_M:
        raise RsgeeError(f"transform origin ({c}, {f}) is not on the {PIXEL_M} m pixel grid")
    return int(c // PIXEL_M), int(f // PIXEL_M) - height


def _check_epsg(epsg) -> int:
    if isinstance(epsg, bool) or not isinstance(epsg, (int, np.integer)) or not (
        32601 <= epsg <= 32660 or 32701 <= epsg <= 32760
    ):
        raise RsgeeError(f"EPSG:{epsg} is not a UTM zone (expected 32601–32660 or 32701–32760)")
    return int(epsg)


# --------------------------------------------------------------------------------------------------
# Hashing and noise (all in world coordinates)
# --------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_U_M1, _U_M2 = np.uint64(_M1), np.uint64(_M2)
_U_GI, _U_GJ = np.uint64(_GOLDEN), np.uint64(0xC2B2AE3D27D4EB4F)
_SQRT_HALF = math.sqrt(0.5)
_LN2, _LN10 = math.log(2.0), math.log(10.0)
#: 16 unit gradient directions (u, v) for the gradient noise: tables, so no trigonometry per pixel.
_GRAD_ANGLES = [math.radians(22.5 * k + 11.25) for k in range(16)]
_GRAD_U, _GRAD_V = np.array([math.cos(a) for a in _GRAD_ANGLES]), np.array([math.sin(a) for a in _GRAD_ANGLES])


def _mix_int(z: int) -> int:
    """splitmix64's finaliser on a Python int (for keys)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array."""
    z ^= z >> np.uint64(30)
    z *= _U_M1
    z ^= z >> np.uint64(27)
    z *= _U_M2
    z ^= z >> np.uint64(31)
    return z


def _hash(key, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """uint64 hash of (key, i, j); i and j are integer arrays that broadcast, key an int or array."""
    key = np.uint64(key) if isinstance(key, int) else key
    zi = _mix(np.asarray(i).astype(np.uint64) * _U_GI ^ key)
    return _mix(zi ^ (np.asarray(j).astype(np.uint64) * _U_GJ))


def _uniform(h: np.ndarray) -> np.ndarray:
    """[0, 1) floats from the top 53 bits of a hash."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) * (1.0 / (hi - lo)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _soft_relu(t: np.ndarray, width: float) -> np.ndarray:
    """max(t, 0) with the kink rounded over ±width (C¹, so slopes stay continuous)."""
    inner = (t + width) * (t + width) * (0.25 / width)
    return np.where(t <= -width, 0.0, np.where(t >= width, t, inner))


class _Noise:
    """Keyed gradient noise over world metres: one world per (seed, EPSG)."""

    def __init__(self, seed: int, epsg: int):
        self.root = _mix_int(_mix_int(seed & _MASK64) ^ (epsg * _GOLDEN))

    def key(self, name: str, index: int = 0) -> int:
        return _mix_int(_mix_int(self.root ^ zlib.crc32(name.encode())) + index * _GOLDEN)

    def gradient(self, key: int, x: np.ndarray, y: np.ndarray, wavelength: float) -> np.ndarray:
        """Perlin gradient noise (≈ −0.7…0.7) with features of ``wavelength`` metres.

        The lattice is rotated and shifted by the key, so octaves and fields never align. The lattice
        corners the window touches are hashed once, then gathered per pixel.
        """
        angle = (key >> 40) / float(1 << 24) * 2.0 * math.pi
        ca, sa = math.cos(angle) / wavelength, math.sin(angle) / wavelength
        fu = x * ca - y * sa
        fu += ((key >> 20) & 0xFFFFF) / 1024.0
        fv = x * sa + y * ca
        fv += (key & 0xFFFFF) / 1024.0
        cu, cv = np.floor(fu), np.floor(fv)
        fu -= cu
        fv -= cv
        iu, iv = cu.astype(np.int64), cv.astype(np.int64)
        i0, j0 = int(iu.min()), int(iv.min())
        nx, ny = int(iu.max()) - i0 + 2, int(iv.max()) - j0 + 2
        corners = _hash(key, np.arange(i0, i0 + nx)[None, :], np.arange(j0, j0 + ny)[:, None])
        direction = (corners >> np.uint64(60)).astype(np.intp).ravel()
        gu, gv = _GRAD_U[direction], _GRAD_V[direction]  # the corners' gradients, as two real tables
        k = iv
        k -= j0
        k *= nx
        k += iu
        k -= i0  # flat index of the lower-left corner; the others are views shifted by 1, nx, nx + 1
        fu1, fv1 = fu - 1.0, fv - 1.0
        n00 = np.take(gu, k)
        n00 *= fu
        n00 += np.take(gv, k) * fv
        n10 = np.take(gu[1:], k)
        n10 *= fu1
        n10 += np.take(gv[1:], k) * fv
        n01 = np.take(gu[nx:], k)
        n01 *= fu
        n01 += np.take(gv[nx:], k) * fv1
        n11 = np.take(gu[nx + 1:], k)
        n11 *= fu1
        n11 += np.take(gv[nx + 1:], k) * fv1
        su = fu * fu * fu * (fu * (fu * 6.0 - 15.0) + 10.0)  # quintic fade: C², no creases
        sv = fv * fv * fv * (fv * (fv * 6.0 - 15.0) + 10.0)
        n10 -= n00
        n10 *= su
        n10 += n00
        n11 -= n01
        n11 *= su
        n11 += n01
        n11 -= n10
        n11 *= sv
        n11 += n10
        return n11

    def fbm(self, name: str, x, y, wavelength: float, octaves: int, persistence: float = 0.5) -> np.ndarray:
        """Fractal sum of ``octaves`` gradient noises from ``wavelength`` down, scaled to unit-ish std."""
        total, amp, norm = None, 1.0, 0.0
        for o in range(octaves):
            n = self.gradient(self.key(name, o), x, y, wavelength / 2.0**o) * amp
            total = n if total is None else total + n
            norm += amp * amp
            amp *= persistence
        return total * (1.0 / (_PERLIN_STD * math.sqrt(norm)))

    def ridged(self, name: str, x, y, wavelength: float, octaves: int, gain: float = 2.0,
               persistence: float = 0.45) -> np.ndarray:
        """Ridged multifractal (Musgrave): sharp ridges, and detail that fades into smooth valleys."""
        total, weight, amp, norm = None, None, 1.0, 0.0
        for o in range(octaves):
            n = self.gradient(self.key(name, o), x, y, wavelength / 2.0**o)
            s = np.maximum(1.0 - np.sqrt(n * n + 0.005) * 1.5, 0.0)  # |n|, crest rounded
            s = s * s
            if weight is not None:
                s = s * weight
            total = s * amp if total is None else total + s * amp
            norm += amp
            weight = _smoothstep(0.0, 1.0, s * gain)  # ≈ min(s·gain, 1) without the kink (no creases)
            amp *= persistence
        return total * (1.0 / norm)

    def pixel_uniform(self, name: str, gx: np.ndarray, gy: np.ndarray, index: int = 0) -> np.ndarray:
        """An independent uniform [0, 1) per world pixel."""
        return _uniform(_hash(self.key(name, index), gx, gy))


#: Standard deviation of one gradient noise octave (measured), so fbm fields have std ≈ 1.
_PERLIN_STD = 0.216


# --------------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------------


class _Scene:
    """One window of the world; each layer is computed once, on first use."""

    def __init__(self, epsg: int, transform, width: int, height: int, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise RsgeeError(f"seed must be an integer, got {seed!r}")
        epsg = _check_epsg(epsg)
        col0, row0 = _window_origin(transform, width, height)
        self.width, self.height = int(width), int(height)
        self.noise = _Noise(int(seed), epsg)
        # World pixel indices (east, north) of the window with a one-pixel margin; rows run south.
        self.gx_m = np.arange(col0 - 1, col0 + width + 1, dtype=np.int64)[None, :]
        self.gy_m = np.arange(row0 + height, row0 - 2, -1, dtype=np.int64)[:, None]
        self.gx, self.gy = self.gx_m[:, 1:-1], self.gy_m[1:-1, :]
        self.x_m = (self.gx_m + 0.5) * float(PIXEL_M)
        self.y_m = (self.gy_m + 0.5) * float(PIXEL_M)
        self.x, self.y = self.x_m[:, 1:-1], self.y_m[1:-1, :]
        self._cache: dict = {}

    def _cached(self, name, make):
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    # --- terrain ----------------------------------------------------------------------------------

    @property
    def terrain(self) -> dict[str, np.ndarray]:
        return self._cached("terrain", self._make_terrain)

    def _make_terrain(self) -> dict[str, np.ndarray]:
        fields = _terrain_fields(self.noise, self.x_m, self.y_m)
        z = fields["z"]
        # Horn's 3×3 gradient (as gdaldem), x east and y north; rows of z run south.
        s = 1.0 / (8.0 * PIXEL_M)
        dzdx = ((z[:-2, 2:] + 2.0 * z[1:-1, 2:] + z[2:, 2:]) - (z[:-2, :-2] + 2.0 * z[1:-1, :-2] + z[2:, :-2])) * s
        dzdy = ((z[:-2, :-2] + 2.0 * z[:-2, 1:-1] + z[:-2, 2:]) - (z[2:, :-2] + 2.0 * z[2:, 1:-1] + z[2:, 2:])) * s
        inner = {k: np.ascontiguousarray(v[1:-1, 1:-1]) for k, v in fields.items()}
        inner["dzdx"], inner["dzdy"] = dzdx, dzdy
        inner["tan_slope"] = np.sqrt(dzdx * dzdx + dzdy * dzdy)
        norm = np.sqrt(dzdx * dzdx + dzdy * dzdy + 1.0)
        inner["cos_sun"] = (-dzdx * _SUN[0] - dzdy * _SUN[1] + _SUN[2]) / norm
        inner["cos_radar"] = (-dzdx * _RADAR[0] - dzdy * _RADAR[1] + _RADAR[2]) / norm
        return inner

    # --- land cover -------------------------------------------------------------------------------

    @property
    def land_cover(self) -> np.ndarray:
        return self._cached("lulc", self._make_land_cover)

    @property
    def parcels(self) -> dict[str, np.ndarray]:
        return self._cached("parcels", lambda: _parcels(self.noise, self.gx, self.gy, self.x, self.y))

    def _make_land_cover(self) -> np.ndarray:
        return _land_cover(self.noise, self.terrain, self.parcels, self.x, self.y)

    # --- Sentinel-2 -------------------------------------------------------------------------------

    def s2(self, bands: list[str], cloud_cover: float) -> np.ndarray:
        lc, t, p, nz = self.land_cover, self.terrain, self.parcels, self.noise
        patch = nz.fbm("s2.patch", self.x, self.y, 600.0, 3)
        pixel = nz.pixel_uniform("s2.pixel", self.gx, self.gy)
        brightness = 1.0 + 0.06 * patch + 0.08 * (pixel - 0.5)
        # Built-up blocks differ in roof and pavement brightness.
        brightness = np.where(lc == BUILT, brightness * (0.7 + 0.6 * p["block"]), brightness)
        illumination = DIFFUSE_FRACTION + (1.0 - DIFFUSE_FRACTION) * np.maximum(t["cos_sun"], 0.0) * (1.0 / _SUN[2])
        greenness = 0.55 + 0.45 * p["parcel"]
        crops = lc == CROPS
        cloudy = _clouds(nz, self.x, self.y, cloud_cover)
        out = np.empty((len(bands), self.height, self.width), dtype=np.uint16)
        for i, band in enumerate(bands):
            b = S2_BANDS.index(band)
            refl = S2_SPECTRA[:, b][lc]
            refl = np.where(crops, greenness * refl + (1.0 - greenness) * SOIL_SPECTRUM[b], refl)
            jitter = 1.0 + 0.04 * (nz.pixel_uniform(f"s2.band.{band}", self.gx, self.gy) - 0.5)
            value = np.rint(refl * brightness * illumination * jitter * 10000.0)
            value = np.clip(value, 1.0, 10000.0)
            value[cloudy] = 0.0
            out[i] = value
        return out

    # --- Sentinel-1 -------------------------------------------------------------------------------

    def s1_expected(self, bands: list[str]) -> np.ndarray:
        """Speckle-free σ0 (linear) per band: class mean × field texture × local-incidence term."""
        lc, t, p, nz = self.land_cover, self.terrain, self.parcels, self.noise
        texture = 1.0 + 0.2 * nz.fbm("s1.texture", self.x, self.y, 400.0, 3)
        texture = np.maximum(texture, 0.3)
        texture = np.where(lc == CROPS, texture * (0.6 + 0.8 * p["parcel"]), texture)
        # σ0 ∝ cos(local incidence)^1.5: brighter on slopes facing the radar, darker facing away,
        # bounded (−9 dB) where the radar grazes or is shadowed.
        incidence = np.maximum(t["cos_radar"], 0.2) * (1.0 / _RADAR[2])
        terrain = incidence * np.sqrt(incidence)
        out = np.empty((len(bands), self.height, self.width))
        for i, band in enumerate(bands):
            mean = _S1_MEAN_LINEAR[:, S1_BANDS.index(band)][self.land_cover]
            out[i] = mean * texture * terrain
        return out

    def speckle(self, bands: list[str], image: int) -> np.ndarray:
        """Multiplicative speckle of acquisition ``image``: gamma-like, mean 1, variance ≈ 1/ENL."""
        return np.stack([
            _gamma_speckle(_hash(self.noise.key(f"s1.speckle.{band}", image), self.gx, self.gy))
            for band in bands
        ])

    def s1_composite(self, bands: list[str], n_images: int) -> np.ndarray:
        """Mean of the acquisitions in linear power (summed image by image, in a fixed order)."""
        expected = self.s1_expected(bands)
        total = expected * self.speckle(bands, 0)
        for k in range(1, n_images):
            total = total + expected * self.speckle(bands, k)
        return total / float(n_images)


_SUN = (
    math.sin(math.radians(SUN_AZIMUTH_DEG)) * math.cos(math.radians(SUN_ELEVATION_DEG)),
    math.cos(math.radians(SUN_AZIMUTH_DEG)) * math.cos(math.radians(SUN_ELEVATION_DEG)),
    math.sin(math.radians(SUN_ELEVATION_DEG)),
)
#: Unit vector from the ground towards the radar (which looks along RADAR_LOOK_AZIMUTH_DEG).
_RADAR = (
    -math.sin(math.radians(RADAR_INCIDENCE_DEG)) * math.sin(math.radians(RADAR_LOOK_AZIMUTH_DEG)),
    -math.sin(math.radians(RADAR_INCIDENCE_DEG)) * math.cos(math.radians(RADAR_LOOK_AZIMUTH_DEG)),
    math.cos(math.radians(RADAR_INCIDENCE_DEG)),
)
_S1_MEAN_LINEAR = np.array([[10.0 ** (db / 10.0) for db in row] for row in S1_MEAN_DB.tolist()])

# Wilson–Hilferty: gamma(k)/k ≈ (a + b·z)³ for a standard normal z; here z is an Irwin–Hall sum of
# four 16-bit uniforms (symmetric, so the exact mean a³ + 3ab² divides out to 1).
_WH_A = 1.0 - 1.0 / (9.0 * ENL)
_WH_B = 1.0 / (3.0 * math.sqrt(ENL))
_WH_NORM = 1.0 / (_WH_A**3 + 3.0 * _WH_A * _WH_B * _WH_B)
_SQRT3 = math.sqrt(3.0)


def _gamma_speckle(h: np.ndarray) -> np.ndarray:
    m = np.uint64(0xFFFF)
    total = (h & m) + ((h >> np.uint64(16)) & m) + ((h >> np.uint64(32)) & m) + (h >> np.uint64(48))
    z = ((total.astype(np.float64) + 2.0) * (1.0 / 65536.0) - 2.0) * _SQRT3
    w = _WH_A + _WH_B * z
    return w * w * w * _WH_NORM


# --------------------------------------------------------------------------------------------------
# The recipes: terrain, parcels, land cover, clouds (all pointwise in world coordinates)
# --------------------------------------------------------------------------------------------------


def _terrain_fields(nz: _Noise, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Elevation (m) and the pointwise fields land cover reuses.

    A regional field (features of ~100 km) decides where mountains rise, so AOIs differ; lowlands are
    low hills whose lower parts are flattened into plains; mountains are a ridged multifractal whose valleys are flattened
    into floors. ``wet`` (how far the underlying relief dips below the flattened floor, 0 on slopes)
    is the valley / depression wetness proxy: lakes sit in its deepest parts, marshes at their rims.
    """
    region = nz.fbm("terrain.region", x, y, 250000.0, 3)
    mountain = _smoothstep(0.0, 1.2, region)
    base = 120.0 + 180.0 * (nz.fbm("terrain.base", x, y, 150000.0, 1) + 2.0)
    hill_amp = 50.0 + 30.0 * nz.fbm("terrain.hill_amp", x, y, 25000.0, 1)
    hills_raw = nz.fbm("terrain.hills", x, y, 5000.0, 6, 0.45)
    hills = np.maximum(hill_amp, 15.0) * _soft_relu(hills_raw - _HILL_FLOOR, 0.3)
    ridges = nz.ridged("terrain.ridges", x, y, 12000.0, 4)
    rough = nz.fbm("terrain.rough", x, y, 1500.0, 4, 0.4)
    ridges = ridges + 0.025 * _smoothstep(_RIDGE_FLOOR, _RIDGE_FLOOR + 0.25, ridges) * rough
    peaks = _MOUNTAIN_RELIEF_M * _soft_relu(ridges - _RIDGE_FLOOR, 0.04)
    floor_texture = 4.0 * nz.gradient(nz.key("terrain.floor"), x, y, 1500.0)
    z = base + 1000.0 * mountain + (1.0 - mountain) * hills + mountain * peaks + floor_texture
    wet_hills = np.maximum(_HILL_FLOOR - hills_raw, 0.0) * (1.0 / _HILL_LAKE_DEPTH)
    wet_ridges = np.maximum(_RIDGE_FLOOR - ridges, 0.0) * (1.0 / _RIDGE_LAKE_DEPTH)
    wet = (1.0 - mountain) * wet_hills + mountain * wet_ridges
    return {"z": z, "mountain": mountain, "wet": wet}


#: Below these levels the hills / ridges fields are flattened into plains and valley floors (~40 % of
#: lowland and ~17 % of mountain area); ``wet`` reaches 1 (open water) this far below them.
_HILL_FLOOR, _HILL_LAKE_DEPTH = -0.2, 1.5
_RIDGE_FLOOR, _RIDGE_LAKE_DEPTH = 0.28, 0.235
_MOUNTAIN_RELIEF_M = 3200.0


def _parcels(nz: _Noise, gx, gy, x, y) -> dict[str, np.ndarray]:
    """Field parcels (rotated rectangles, orientation and size per 4 km district) and town blocks.

    Returns uniforms that are constant over a parcel (``parcel``) or a 30 m block (``block``).
    """
    district = _hash(nz.key("parcels.district"), np.floor(x * (1.0 / 4000.0)).astype(np.int64),
                     np.floor(y * (1.0 / 4000.0)).astype(np.int64))
    angle = (district & np.uint64(7)).astype(np.intp)
    ca, sa = _PARCEL_COS[angle], _PARCEL_SIN[angle]
    along = 150.0 + 250.0 * _uniform(district)  # parcel length (m)
    across = 0.5 * along
    u = np.floor((x * ca - y * sa) / along).astype(np.int64)
    v = np.floor((x * sa + y * ca) / across).astype(np.int64)
    parcel = _uniform(_hash(district ^ np.uint64(nz.key("parcels.parcel")), u, v))
    block = _uniform(_hash(nz.key("parcels.block"), gx // 3, gy // 3))
    return {"parcel": parcel, "block": block}


#: The eight parcel orientations a district can have (every 22.5°).
_PARCEL_COS = np.array([math.cos(math.radians(22.5 * k)) for k in range(8)])
_PARCEL_SIN = np.array([math.sin(math.radians(22.5 * k)) for k in range(8)])


def _land_cover(nz: _Noise, t: dict, p: dict, x, y) -> np.ndarray:
    """Dynamic World classes from elevation, slope, wetness and a few patch fields.

    Rules, later ones winning: grass everywhere; shrub in dry patches, at forest edges and above the
    tree line; trees below the tree line, favoured by slope (flat land is cleared); crop parcels
    (< 8°) and towns (< 6°) on low ground; flooded vegetation on flat wet rims of floors; bare rock
    above the rock line and on cliffs (> 40°); water on flat ground in the deepest parts of floors and
    along rivers; snow above the snow line (< 40°).
    """
    z, g, wet = t["z"], t["tan_slope"], t["wet"]
    forest = nz.fbm("lc.forest", x, y, 1500.0, 4) + 1.2 * np.minimum(g, 0.6)
    shrubby = nz.fbm("lc.shrub", x, y, 800.0, 3)
    farming = nz.fbm("lc.farming", x, y, 6000.0, 2)
    towns = nz.fbm("lc.towns", x, y, 2500.0, 3)
    marsh = nz.fbm("lc.marsh", x, y, 700.0, 2)
    river = np.abs(nz.fbm("lc.river", x, y, 5000.0, 2, 0.4))
    lines = nz.fbm("lc.lines", x, y, 3000.0, 1)
    treeline = 1950.0 + 120.0 * lines
    rockline = 2500.0 + 150.0 * lines
    snowline = 2850.0 + 120.0 * nz.fbm("lc.snow", x, y, 1200.0, 2)

    gentle, flat = g < _TAN_8, g < _TAN_3
    lc = np.full(z.shape, GRASS, dtype=np.uint8)
    forest_edge = (forest > 0.3) & (forest <= 0.5) & (z < treeline + 200.0)
    lc[(shrubby > 0.9) | forest_edge | ((z > treeline) & (shrubby > 0.8))] = SHRUB
    lc[(forest > 0.5) & (z < treeline) & (g < _TAN_40)] = TREES
    crops = gentle & (z < 1700.0) & (farming > -0.6) & (p["parcel"] < 0.65 + 0.15 * farming) & (wet < 0.65)
    lc[crops] = CROPS
    lc[(towns > 1.3) & (g < _TAN_6) & (z < 2000.0) & (wet < 0.65) & (p["block"] < 0.8)] = BUILT
    lc[(wet > 0.6) & (marsh > 0.2) & flat] = FLOODED
    lc[((z > rockline) & (shrubby < 0.5)) | (g > _TAN_40)] = BARE
    lc[((wet > 1.0) | ((river < 0.025) & (wet > 0.0))) & flat] = WATER
    lc[(z > snowline) & (g < _TAN_40)] = SNOW
    return lc


_TAN_3, _TAN_6, _TAN_8, _TAN_40 = (math.tan(math.radians(a)) for a in (3.0, 6.0, 8.0, 40.0))


def _clouds(nz: _Noise, x, y, cover: float) -> np.ndarray:
    """Pixels cloudy in every image of the window: the top ``cover`` quantile of a cloud field."""
    if cover <= 0.0:
        return np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    if cover >= 1.0:
        return np.ones(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    threshold = float(np.interp(1.0 - cover, _CLOUD_QUANTILE_P, _CLOUD_QUANTILE_V))
    return nz.fbm("s2.clouds", x, y, 1500.0, 5, 0.55) > threshold


#: Quantiles of the cloud field (measured over 8 M pixels of 500 windows and 20 seeds), to turn a
#: cover fraction into a threshold.
_CLOUD_QUANTILE_P = np.array(
    [0.0, 0.001, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7,
     0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 0.999, 1.0]
)
_CLOUD_QUANTILE_V = np.array(
    [-4.5, -2.836, -2.256, -1.942, -1.655, -1.304, -1.059, -0.863, -0.692, -0.539, -0.396, -0.26, -0.127, 0.003,
     0.133, 0.266, 0.402, 0.545, 0.699, 0.868, 1.064, 1.307, 1.652, 1.937, 2.256, 2.867, 4.5]
)
