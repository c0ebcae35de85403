"""Slope, aspect and hillshade of a DEM, matching GDAL's ``gdaldem -compute_edges``.

The archive's terrain bands must be what a GIS user gets from ``gdaldem`` (Horn's method, azimuth
315°, altitude 45°), so this module copies GDAL 3.6's arithmetic, not only its formulas:

- The 3×3 sums are done in float32 in GDAL's order (``((a + b) + b) + c``). Near-flat pixels then
  get the same gradient bits as gdaldem, and exactly the same pixels are flagged flat.
- Edges follow ``GDALGeneric3x3Processing`` with ``-compute_edges``. A missing row or column
  outside the raster is extrapolated linearly (``2·edge − inner``). In the first and last rows,
  though, gdaldem repeats the edge column instead. So at the four corners the x gradient is half
  the true one, even on a plane.
- A NaN/nodata neighbour is replaced by the window's centre value, and so is an extrapolated value
  that uses a missing cell or equals the nodata value. A missing centre gives NaN.
- Aspect uses gdaldem's raw 3×3 sums, which ignore the pixel size, exactly as gdaldem does
  (this only matters where ``xres != yres``). A pixel is flat only where both sums are exactly 0.

All three products come from one pass over the DEM, 4–6× faster than the three gdaldem calls
(``benchmarks/bench_terrain.py``), in row strips that stay in cache, spread over threads (numpy
releases the GIL), with about 3× the DEM's size in memory (the outputs). The arctangents are an
odd minimax polynomial (error < 2e-5°) on a half-angle argument, because numpy's float32
``arctan``/``arctan2`` are scalar libm calls slower than everything else put together.
Hillshade values within 2e-4 DN of a rounding boundary are recomputed in float64 in gdaldem's
own operation order, so rounding them gives gdaldem's bytes (except where gdaldem's approximate
reciprocal square root, good to ~5e-5 DN, tips a value across: about 1 pixel per million).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["ASPECT_FLAT", "ASPECT_FLAT_BELOW", "Terrain", "hillshade_to_uint8", "terrain"]

#: Aspect of a flat pixel (gdaldem writes its nodata there; we use the archive's −1).
ASPECT_FLAT = -1.0
#: Readers of an archive test ``aspect < ASPECT_FLAT_BELOW`` for flat, not ``< 0``: tiles written with
#: ``rsgee tile --max-float-error E`` hold −1 ± E for flat and may hold −E…0 for an aspect of 0…E.
ASPECT_FLAT_BELOW = -0.5

# atan(t) = t·P(t²) on [0, 1]: weighted least-squares minimax fit, |error| < 3.8e-8 rad in float64.
# Coefficients are of 2·atan in degrees: |error| < 1.6e-5° when evaluated in float32.
_TWO_ATAN_DEG = tuple(
    c * (360.0 / math.pi)
    for c in (
        0.9999993356202723,
        -0.3332986096664722,
        0.19946567895718267,
        -0.13908641537205774,
        0.09642229780969953,
        -0.05591279255521893,
        0.021863295518928502,
        -0.004054664441072164,
    )
)
# Our float32 hillshade is within ~5e-5 DN of gdaldem's float64 value (measured); values closer
# than this to a .5 rounding boundary are recomputed exactly.
_HILL_REFINE_DN = 2e-4
# Pixels per strip: big enough to amortise numpy's per-call overhead (held under the GIL), small
# enough for a strip's scratch arrays to stay mostly in cache (measured best of 2^14..2^18).
_STRIP_PIXELS = 1 << 17
# Below this many pixels threads cost more than they save.
_MIN_PIXELS_FOR_THREADS = 1 << 20


@dataclass(frozen=True)
class Terrain:
    """Terrain derivatives of a DEM, all float32 and the DEM's shape.

    Attributes:
        slope: Degrees from horizontal, 0–90; NaN where the DEM is missing.
        aspect: Downslope direction in degrees clockwise from north, [0, 360);
            ``ASPECT_FLAT`` (−1) where flat; NaN where the DEM is missing.
        hillshade: gdaldem's shade value before its uint8 conversion, 1–255 (not rounded, so
            it can be used as a continuous input); NaN where the DEM is missing.
            ``hillshade_to_uint8`` gives gdaldem's bytes.
    """

    slope: np.ndarray
    aspect: np.ndarray
    hillshade: np.ndarray


def hillshade_to_uint8(hillshade: np.ndarray) -> np.ndarray:
    """gdaldem's byte hillshade: round half up, 0 (its nodata) where NaN.

    GDAL converts float to byte as ``(uint8)(v + 0.5f)``. ``np.round`` differs only on exact .5
    ties (it rounds half to even), so it is at most 1 DN off.
    """
    out = np.add(hillshade, np.float32(0.5), dtype=np.float32)
    np.floor(out, out=out)
    np.fmax(out, np.float32(0), out=out)  # NaN → 0
    np.minimum(out, np.float32(255), out=out)
    return out.astype(np.uint8)


@dataclass(frozen=True)
class _Params:
    """Constants of one ``terrain`` call."""

    kx: float  # z / (8·xres·scale): east sum → gradient
    ky: float
    hill_a0: float  # 254·sin(alt)
    hill_ce: float  # 254·cos(alt)·sin(az)·kx
    hill_cn: float  # 254·cos(alt)·cos(az)·ky
    square: bool  # kx == ky
    exact_hill_sums: bool  # hillshade needs gdaldem's square-pixel sums (float DEM)
    nodata: np.float32 | None  # non-NaN nodata, as float32 (GDAL compares in float32)
    gdal: dict  # gdaldem's own hillshade constants, for the exact recomputation


def terrain(
    dem: np.ndarray,
    xres: float,
    yres: float,
    *,
    scale: float = 1.0,
    z_factor: float = 1.0,
    nodata: float | None = None,
    azimuth: float = 315.0,
    altitude: float = 45.0,
    threads: int | None = None,
) -> Terrain:
    """Slope, aspect and hillshade of a north-up DEM, as ``gdaldem -compute_edges`` computes them.

    Equivalent to ``gdaldem slope|aspect|hillshade -s scale -z z_factor -az azimuth -alt altitude
    -compute_edges`` (Horn), with gdaldem's nodata outputs written as NaN and flat aspect as −1.
    The DEM is read as float32, as gdaldem does.

    Args:
        dem: 2-D elevation array, any real dtype. NaN is always treated as missing, and so are
            the masked cells of a masked array.
        xres: Pixel width in the DEM's horizontal units (> 0).
        yres: Pixel height in the DEM's horizontal units (> 0; the raster is assumed north-up).
        scale: gdaldem's ``-s``, the ratio of vertical to horizontal units: 111120 for a DEM in
            degrees with heights in metres (GDAL uses it for x and y alike, without cos(lat)).
        z_factor: Vertical exaggeration (gdaldem hillshade ``-z``); also applied to slope, where
            it equals gdaldem ``slope -s scale/z_factor``. Aspect does not depend on it.
        nodata: An elevation value that marks missing cells, in addition to NaN.
        azimuth: Light source direction for the hillshade, degrees clockwise from north.
        altitude: Light source elevation for the hillshade, degrees above the horizon.
        threads: Worker threads; default one per available core (up to 8).

    Returns:
        The three products as float32 arrays of the DEM's shape. A raster with fewer than 2 rows or
        columns is all NaN, as gdaldem leaves it nodata.

    Raises:
        ValueError: If the DEM is not 2-D or a resolution, scale or factor is not usable.
    """
    if isinstance(dem, np.ma.MaskedArray):  # e.g. rasterio's read(masked=True)
        dem = dem.astype(np.float32).filled(np.nan)
    dem = np.asarray(dem)
    if dem.ndim != 2:
        raise ValueError(f"dem must be a 2-D array, got shape {dem.shape}")
    if not np.issubdtype(dem.dtype, np.number) or np.issubdtype(dem.dtype, np.complexfloating):
        raise ValueError(f"dem must hold real numbers, got dtype {dem.dtype}")
    for name, value in (("xres", xres), ("yres", yres), ("scale", scale)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    for name, value in (("z_factor", z_factor), ("azimuth", azimuth), ("altitude", altitude)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")

    rows, cols = dem.shape
    slope = np.empty((rows, cols), np.float32)
    aspect = np.empty((rows, cols), np.float32)
    hill = np.empty((rows, cols), np.float32)
    if rows < 2 or cols < 2:
        for a in (slope, aspect, hill):
            a.fill(np.nan)
        return Terrain(slope, aspect, hill)

    # Sums of ≤ 16-bit integers are exact in float32, so gdaldem's two summation orders agree.
    small_int = np.issubdtype(dem.dtype, np.integer) and dem.dtype.itemsize <= 2
    prm = _params(xres, yres, scale, z_factor, nodata, azimuth, altitude, not small_int)
    outs = (slope, aspect, hill)

    n_threads = threads if threads is not None else _default_threads()
    if rows * cols < _MIN_PIXELS_FOR_THREADS:
        n_threads = 1
    strip = max(1, min(rows, _STRIP_PIXELS // cols))
    # Interior rows 1..rows-2 (their edge columns included) in strips; rows 0 and rows-1 apart.
    strips = [(a, min(a + strip, rows - 1)) for a in range(1, rows - 1, strip)]
    if n_threads <= 1 or len(strips) < 2:
        _work(dem, outs, prm, strips, strip)
    else:
        n_threads = min(n_threads, len(strips))
        chunks = [strips[k::n_threads] for k in range(n_threads)]
        with ThreadPoolExecutor(n_threads) as pool:
            for fut in [pool.submit(_work, dem, outs, prm, c, strip) for c in chunks]:
                fut.result()
    _work(dem, outs, prm, [(0, 1), (rows - 1, rows)], 1)
    return Terrain(slope, aspect, hill)


def _default_threads() -> int:
    """One thread per core this process may use, at most 8 (the strips are memory-bound)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return min(cores, 8)


def _params(xres, yres, scale, z, nodata, azimuth, altitude, float_dem: bool) -> _Params:
    """Fold resolution, scale and light into the few constants the kernels use."""
    kx = z / (8.0 * xres * scale)
    ky = z / (8.0 * yres * scale)
    square = kx == ky
    alt = math.radians(altitude)
    az = math.radians(azimuth)
    nd = None
    if nodata is not None and not math.isnan(nodata):
        nd = np.float32(nodata)
    return _Params(
        kx=kx,
        ky=ky,
        hill_a0=254.0 * math.sin(alt),
        hill_ce=254.0 * math.cos(alt) * math.sin(az) * kx,
        hill_cn=254.0 * math.cos(alt) * math.cos(az) * ky,
        square=square,
        exact_hill_sums=float_dem and xres == yres,
        nodata=nd,
        gdal=_gdal_hillshade_constants(xres, yres, scale, z, azimuth, altitude),
    )


def _gdal_hillshade_constants(xres, yres, scale, z, azimuth, altitude) -> dict:
    """GDALCreateHillshadeData, operation for operation, so that doubles match bit for bit."""
    d2r = math.pi / 180.0
    inv_nsres = 1.0 / (-yres * scale)  # geotransform[5] is negative for a north-up raster
    inv_ewres = 1.0 / (xres * scale)
    sin_alt = math.sin(altitude * d2r)
    az_r = azimuth * d2r
    z_factor = z / 8
    cos_alt_mul_z = math.cos(altitude * d2r) * z_factor
    cos_az = math.cos(az_r) * cos_alt_mul_z
    sin_az = math.sin(az_r) * cos_alt_mul_z
    c = {
        "same_res": xres == yres,
        "inv_ewres": inv_ewres,
        "inv_nsres": inv_nsres,
        "square_z": z_factor * z_factor,
        "sin_alt_254": 254.0 * sin_alt,
        "cos_az_254": 254.0 * cos_az,
        "sin_az_254": 254.0 * sin_az,
    }
    c["square_z_inv_res2"] = c["square_z"] * inv_ewres * inv_ewres
    c["cos_az_254_inv_res"] = c["cos_az_254"] * -inv_ewres
    c["sin_az_254_inv_res"] = c["sin_az_254"] * inv_ewres
    return c


# --------------------------------------------------------------------------------------------------
# Strip worker


class _Buffers:
    """Scratch arrays for the products of ``shape`` pixels (no allocation per strip)."""

    def __init__(self, shape):
        self.s = [np.empty(shape, np.float32) for _ in range(4)]
        self.zero = np.zeros(shape, np.float32)  # np.maximum with an array is 5× faster than with 0
        self.ib = np.empty(shape, np.int32)
        self.flat = np.empty(shape, bool)
        self.at360 = np.empty(shape, bool)

    def cut(self, h: int) -> _Buffers:
        """The same buffers cut to their first ``h`` elements (rows)."""
        view = object.__new__(_Buffers)
        view.s = [s[:h] for s in self.s]
        view.zero, view.ib, view.flat, view.at360 = (
            self.zero[:h],
            self.ib[:h],
            self.flat[:h],
            self.at360[:h],
        )
        return view


def _work(dem, outs, prm: _Params, strips, max_rows: int) -> None:
    """Compute output rows ``[a, b)`` for each strip; strips are interior rows or one edge row.

    A strip is held as a padded block ``P`` of ``h + 2`` rows × ``W = cols + 2`` columns, and every
    array is handled flat: output pixel (r, c) sits at ``k = r·W + c`` and its window cell (dr, dc)
    at ``P.flat[k + dr·W + dc]``. Neighbours are then contiguous 1-D slices (2-D strided views are
    2–3× slower in numpy); the two columns ``c ≥ cols`` of each row are junk and never copied out.
    """
    rows, cols = dem.shape
    W = cols + 2
    f4 = np.float32
    P_ = np.empty((max_rows + 2) * W, f4)  # padded DEM strip
    A_ = np.empty((max_rows + 2) * W, f4)  # vertical / horizontal sums, then differences
    E_ = np.empty(max_rows * W, f4)  # left − right   (∝ downslope east)
    N_ = np.empty(max_rows * W, f4)  # bottom − top   (∝ downslope north)
    exact = prm.exact_hill_sums
    if exact:
        Eh_ = np.empty(max_rows * W, f4)
        Nh_ = np.empty(max_rows * W, f4)
    res_ = [np.empty(max_rows * W, f4) for _ in range(3)]
    bP_ = np.empty((max_rows + 2) * W, bool)
    buf = _Buffers(max_rows * W)
    near_at, near_win = [], []  # hillshade pixels to recompute exactly
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for a, b in strips:
            h = b - a
            n = h * W
            Pf = P_[: n + 2 * W]
            P = Pf.reshape(h + 2, W)
            A, E, N = A_[: n + 2 * W], E_[:n], N_[:n]
            _fill_block(dem, a, b, P, bP_[: n + 2 * W].reshape(h + 2, W), prm.nodata)
            has_missing = bool(np.isnan(Pf.min()))
            # Separable Horn sums in gdaldem's float32 order: left = ((w0 + w3) + w3) + w6, etc.
            m = n - 2  # the last two flat positions are junk columns and would read past P
            np.add(Pf[:n], Pf[W : W + n], out=A[:n])
            A[:n] += Pf[W : W + n]
            A[:n] += Pf[2 * W : 2 * W + n]
            np.subtract(A[:m], A[2 : m + 2], out=E[:m])
            np.add(Pf[: n + 2 * W - 2], Pf[1 : n + 2 * W - 1], out=A[: n + 2 * W - 2])
            A[: n + 2 * W - 2] += Pf[1 : n + 2 * W - 1]
            A[: n + 2 * W - 2] += Pf[2 : n + 2 * W]
            np.subtract(A[2 * W : 2 * W + m], A[:m], out=N[:m])
            E[m:] = 0
            N[m:] = 0
            if exact:
                # gdaldem's square-pixel hillshade takes differences first ((w0 − w8) + …), which
                # is exact for real terrain, while the sums above round at ulp(4·z): same here.
                Eh, Nh = Eh_[:n], Nh_[:n]
                np.subtract(Pf[: n + 2 * W - 2], Pf[2 : n + 2 * W], out=A[: n + 2 * W - 2])
                np.add(A[:m], A[W : W + m], out=Eh[:m])
                Eh[:m] += A[W : W + m]
                Eh[:m] += A[2 * W : 2 * W + m]
                np.subtract(Pf[2 * W : 2 * W + n], Pf[:n], out=A[:n])
                np.add(A[:m], A[1 : m + 1], out=Nh[:m])
                Nh[:m] += A[1 : m + 1]
                Nh[:m] += A[2 : m + 2]
                Eh[m:] = 0
                Nh[m:] = 0
            else:
                Eh, Nh = E, N
            res = [r[:n] for r in res_]
            _products(E, N, Eh, Nh, prm, *res, buf.cut(n))
            if has_missing:
                _fix_missing(P, E, N, prm, res, cols)
            k, w = _near_rounding_boundary(P, res[2], buf.cut(n), cols, has_missing)
            if k.size:
                i, j = np.divmod(k, W)
                near_at.append((a + i) * cols + j)
                near_win.append(w)
            for o, r in zip(outs, res):
                np.copyto(o[a:b], r.reshape(h, W)[:, :cols])
        if near_at:  # one batch per worker: the per-call overhead would dominate per strip
            outs[2].reshape(-1)[np.concatenate(near_at)] = _gdal_hillshade(
                np.concatenate(near_win, axis=1), prm.gdal
            )


def _fill_block(dem, a: int, b: int, P, bP, nodata) -> None:
    """Padded float32 copy of DEM rows ``a-1 .. b`` with gdaldem's edge values, NaN for missing."""
    rows = dem.shape[0]
    first, last = a == 0, b == rows
    if first:  # the row above is extrapolated and the edge columns repeated (gdaldem's jmin = j)
        P[1:3, 1:-1] = dem[0:2]
    elif last:  # likewise below
        P[0:2, 1:-1] = dem[rows - 2 : rows]
    else:  # interior rows: the edge columns are extrapolated
        P[:, 1:-1] = dem[a - 1 : b + 1]
    if nodata is not None:
        np.equal(P, nodata, out=bP)
        np.copyto(P, np.float32(np.nan), where=bP)
    if first or last:
        edge, inner, outer = (P[0], P[1], P[2]) if first else (P[2], P[1], P[0])
        pads = [edge[1:-1]]
        np.subtract(2 * inner[1:-1], outer[1:-1], out=pads[0])
    else:
        pads = [P[:, 0], P[:, -1]]
        np.subtract(2 * P[:, 1], P[:, 2], out=pads[0])
        np.subtract(2 * P[:, -2], P[:, -3], out=pads[1])
    if nodata is not None:  # an extrapolated value equal to nodata counts as missing in gdaldem
        for p in pads:
            p[p == nodata] = np.nan
    if first or last:
        P[:, 0] = P[:, 1]
        P[:, -1] = P[:, -2]


_SIGN = np.int32(-(2**31))


def _flip_sign(v, s, ib) -> None:
    """v = copysign(v, s) for v ≥ 0, with two integer ops (np.copysign is not vectorised)."""
    np.bitwise_and(s.view(np.int32), _SIGN, out=ib)
    vi = v.view(np.int32)
    np.bitwise_xor(vi, ib, out=vi)


def _products(E, N, Eh, Nh, prm: _Params, slope, aspect, hill, buf: _Buffers) -> None:
    """Hillshade, slope and aspect from the Horn sums, float32, into the given arrays.

    ``E``/``N`` are gdaldem's generic sums (slope, aspect); ``Eh``/``Nh`` the sums its hillshade
    uses (the same arrays unless the pixels are square and the DEM is float).
    """
    s1, s2, s3, s4 = buf.s
    # R = |(E, N)| for aspect, from the raw sums so that aspect does not depend on scale or z.
    np.multiply(E, E, out=s1)
    np.multiply(N, N, out=s2)
    s1 += s2
    np.sqrt(s1, out=s3)
    # q = |∇z|², g = |∇z| = tan(slope), den = sqrt(1 + q) = 1 / cos(slope): generic sums.
    if prm.square:
        s1 *= prm.kx * prm.kx
        np.multiply(s3, abs(prm.kx), out=s2)
    else:
        np.multiply(E, prm.kx, out=s1)
        s1 *= s1
        np.multiply(N, prm.ky, out=s2)
        s2 *= s2
        s1 += s2
        np.sqrt(s1, out=s2)
    s1 += 1
    np.sqrt(s1, out=s1)
    # Hillshade: 1 + max(0, 254·(sin alt + cos alt·(x sin az + y cos az))) / sqrt(1 + q),
    # with the aspect output as scratch.
    if Eh is E:
        den_h = s1
    else:
        np.multiply(Eh, Eh, out=hill)
        np.multiply(Nh, Nh, out=s4)
        hill += s4
        hill *= prm.kx * prm.kx
        hill += 1
        np.sqrt(hill, out=hill)
        den_h = hill
    np.multiply(Eh, prm.hill_ce, out=s4)
    np.multiply(Nh, prm.hill_cn, out=aspect)
    s4 += aspect
    s4 += prm.hill_a0
    np.maximum(s4, buf.zero, out=s4)
    np.divide(s4, den_h, out=hill)
    hill += 1
    # Slope = atan(g) = 2·atan(g / (1 + sqrt(1 + g²))), whose argument is always in [0, 1).
    s1 += 1
    np.divide(s2, s1, out=s4)
    _two_atan_deg(s4, s1, slope)
    # Aspect = atan2(E, N) clockwise from north. θ = atan2(|E|, |N|) = 2·atan(|E| / (|N| + R)),
    # then unfolded to its quadrant by the signs of N and E.
    np.abs(N, out=s2)
    s3 += s2
    np.equal(s3, 0, out=buf.flat)
    np.abs(E, out=s2)
    np.divide(s2, s3, out=s4)
    _two_atan_deg(s4, s1, aspect)
    np.subtract(90, aspect, out=aspect)
    _flip_sign(aspect, N, buf.ib)  # 90 − θ2, θ2 = angle from north in [0°, 180°]
    aspect += 90
    _flip_sign(aspect, E, buf.ib)  # 180 − azimuth
    np.subtract(180, aspect, out=aspect)
    np.greater_equal(aspect, 360, out=buf.at360)
    np.copyto(aspect, np.float32(0), where=buf.at360)
    np.copyto(aspect, np.float32(ASPECT_FLAT), where=buf.flat)


def _two_atan_deg(t, u, out) -> None:
    """out = 2·atan(t) in degrees for t in [0, 1] (NaN stays NaN); ``u`` is scratch."""
    np.multiply(t, t, out=u)
    c = _TWO_ATAN_DEG
    np.multiply(u, c[-1], out=out)
    for k in range(len(c) - 2, 0, -1):
        out += c[k]
        out *= u
    out += c[0]
    out *= t


# --------------------------------------------------------------------------------------------------
# Per-pixel paths: windows with missing cells, and hillshade values at a rounding boundary


def _window_offsets(W: int) -> np.ndarray:
    """Flat offsets of the 3×3 window cells (row-major, cell 4 = centre) in a block of width W."""
    return np.array([dr * W + dc for dr in range(3) for dc in range(3)], np.intp)


def _gather(Pf, W: int, k, has_missing: bool) -> np.ndarray:
    """The 3×3 windows (9, m) of flat output positions k, missing cells replaced by the centre."""
    w = Pf[k + _window_offsets(W)[:, None]]
    if has_missing:
        miss = np.isnan(w)
        if miss.any():
            np.copyto(w, np.broadcast_to(w[4], w.shape), where=miss)
    return w


def _sparse_flatnonzero(mask, cols: int, W: int) -> np.ndarray:
    """np.flatnonzero of a mostly-False mask, minus junk columns: scans it 8 bytes at a time."""
    n8 = mask.size // 8 * 8
    words = np.flatnonzero(mask[:n8].view(np.uint64) != 0)  # 4× faster than on uint64 itself
    k = (words[:, None] * 8 + np.arange(8)).ravel()
    k = np.concatenate([k, np.arange(n8, mask.size)])
    k = k[mask[k]]
    return k[k % W < cols]


def _window_sums(w):
    """Horn sums of gathered windows in gdaldem's float32 order: left − right, bottom − top."""
    left = ((w[0] + w[3]) + w[3]) + w[6]
    right = ((w[2] + w[5]) + w[5]) + w[8]
    bottom = ((w[6] + w[7]) + w[7]) + w[8]
    top = ((w[0] + w[1]) + w[1]) + w[2]
    return left - right, bottom - top


def _window_sums_same_res(w):
    """The sums of gdaldem's square-pixel hillshade (GDALHillshadeAlg_same_res), same sense."""
    acc_x = w[0] - w[8]
    six_minus_two = w[6] - w[2]
    acc_y = acc_x.copy()
    three_minus_five = w[3] - w[5]
    one_minus_seven = w[1] - w[7]
    acc_x += three_minus_five
    acc_y += one_minus_seven
    acc_x += three_minus_five
    acc_y += one_minus_seven
    acc_x += six_minus_two
    acc_y -= six_minus_two
    return acc_x, -acc_y  # acc_y is top − bottom


def _fix_missing(P, E, N, prm, res, cols: int) -> None:
    """Redo pixels whose window holds a missing cell; NaN where the centre is missing."""
    W = P.shape[1]
    Pf = P.ravel()
    centre_missing = np.isnan(Pf[W + 1 : W + 1 + E.size])  # centre of flat position k
    redo = np.isnan(E) | np.isnan(N)
    redo &= ~centre_missing
    k = np.flatnonzero(redo)
    k = k[k % W < cols]
    if k.size:
        w = _gather(Pf, W, k, True)
        e, n = _window_sums(w)
        eh, nh = _window_sums_same_res(w) if prm.exact_hill_sums else (e, n)
        vals = [np.empty(k.size, np.float32) for _ in range(3)]
        _products(e, n, eh, nh, prm, *vals, _Buffers(k.size))
        for r, v in zip(res, vals):
            r[k] = v
    for r in res:
        np.copyto(r, np.float32(np.nan), where=centre_missing)


def _near_rounding_boundary(P, hill, buf: _Buffers, cols: int, has_missing: bool):
    """Flat positions and windows of hillshade values within _HILL_REFINE_DN of a .5 boundary."""
    f = buf.s[0]
    np.rint(hill, out=f)
    np.subtract(hill, f, out=f)
    np.abs(f, out=f)
    np.greater(f, 0.5 - _HILL_REFINE_DN, out=buf.flat)
    W = P.shape[1]
    k = _sparse_flatnonzero(buf.flat, cols, W)
    return k, _gather(P.ravel(), W, k, has_missing)


def _gdal_hillshade(w, g: dict) -> np.ndarray:
    """gdaldem's hillshade of gathered windows (GDALHillshadeAlg[_same_res]), exact square root."""
    if g["same_res"]:
        e, n = _window_sums_same_res(w)
        x = e.astype(np.float64)
        y = -n.astype(np.float64)  # gdaldem's acc_y = top − bottom
        num = g["sin_alt_254"] + (x * g["sin_az_254_inv_res"] + y * g["cos_az_254_inv_res"])
        den = 1 + g["square_z_inv_res2"] * (x * x + y * y)
    else:
        e, n = _window_sums(w)
        x = e.astype(np.float64) * g["inv_ewres"]
        y = n.astype(np.float64) * g["inv_nsres"]
        num = g["sin_alt_254"] - (y * g["cos_az_254"] - x * g["sin_az_254"])
        den = 1 + g["square_z"] * (x * x + y * y)
    cang = num / np.sqrt(den)
    return np.where(cang <= 0.0, 1.0, 1.0 + cang).astype(np.float32)
