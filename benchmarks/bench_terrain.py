"""Claim: rsgee's terrain() gives gdaldem's slope/aspect/hillshade, faster than the gdaldem CLI.

Builds seeded fractal DEMs (spectral synthesis, power ∝ k^-3.2, RMS slope tan 20°, a lake clipped
flat at the 5th percentile; 10 m pixels, EPSG:32633, uncompressed GeoTIFF) in a temporary folder.
Then, in one run, it times (median of --repeat runs after one warm-up):

- ours: ``rsgee.preprocess.terrain.terrain`` computing all three products, in memory (default
  threads, and 1 thread), and end to end (rasterio read + terrain + three GeoTIFF writes);
- reference: a plain float64 numpy Horn with ``np.pad`` edge extrapolation (below);
- gdaldem: ``gdaldem slope|aspect|hillshade -compute_edges`` through subprocess (3.6.2 here),
  process start-up, GeoTIFF read and write included.

It prints times, the ratios gdaldem/ours and reference/ours, and the largest differences from
gdaldem: slope (°), aspect (°, pixels gdaldem does not flag flat), hillshade (DN after gdaldem's
uint8 rounding), all pixels including the borders.

    python benchmarks/bench_terrain.py [--sizes 2048 8192] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rsgee.preprocess.terrain import ASPECT_FLAT, hillshade_to_uint8, terrain  # noqa: E402

RES = 10.0
GDAL_NODATA = -9999.0


# --------------------------------------------------------------------------------------------------
# Inputs


def fractal_dem(n: int, seed: int = 20) -> np.ndarray:
    """Spectral-synthesis DEM (float32, metres): power ∝ k^-3.2, RMS slope tan 20°, a flat lake."""
    from scipy import fft

    rng = np.random.default_rng(seed)
    ky = fft.fftfreq(n).astype(np.float32)[:, None]
    kx = fft.rfftfreq(n).astype(np.float32)[None, :]
    k = np.sqrt(kx * kx + ky * ky)
    k[0, 0] = 1.0
    amp = k ** np.float32(-3.2 / 2)
    amp[0, 0] = 0.0
    del k
    spec = rng.standard_normal(amp.shape, dtype=np.float32) * amp + 1j * (
        rng.standard_normal(amp.shape, dtype=np.float32) * amp
    )
    del amp
    z = fft.irfft2(spec.astype(np.complex64), s=(n, n), workers=-1).astype(np.float32)
    del spec
    gy, gx = np.gradient(z, RES)
    rms_gradient = np.sqrt(np.mean(gx * gx + gy * gy, dtype=np.float64))
    z *= np.float32(np.tan(np.radians(20.0)) / rms_gradient)
    del gx, gy
    z += np.float32(800.0 - z.mean(dtype=np.float64))
    np.maximum(z, np.float32(np.percentile(z, 5)), out=z)  # the lake
    return z


def write_tif(path: Path, array: np.ndarray, nodata=None) -> None:
    with rasterio.open(
        path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
        dtype=array.dtype, crs="EPSG:32633", transform=from_origin(500000.0, 5200000.0, RES, RES),
        nodata=nodata,
    ) as dst:
        dst.write(array, 1)


def read_tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


# --------------------------------------------------------------------------------------------------
# The methods


def ours(dem: np.ndarray, threads: int | None = None):
    t = terrain(dem, RES, RES, threads=threads)
    return t.slope, t.aspect, t.hillshade


def ours_end_to_end(src: Path, out: Path):
    """What gdaldem does: read the GeoTIFF, compute, write three GeoTIFFs (like its outputs)."""
    with rasterio.open(src) as ds:
        dem = ds.read(1)
        profile = ds.profile
        res_x, res_y = ds.res
        nodata = ds.nodata
    t = terrain(dem, res_x, res_y, nodata=nodata)
    for name, array, dtype, nodata in (
        ("slope", np.nan_to_num(t.slope, nan=GDAL_NODATA), "float32", GDAL_NODATA),
        ("aspect", np.nan_to_num(t.aspect, nan=GDAL_NODATA), "float32", GDAL_NODATA),
        ("hillshade", hillshade_to_uint8(t.hillshade), "uint8", 0),
    ):
        profile.update(dtype=dtype, nodata=nodata)
        with rasterio.open(out / f"ours_{name}.tif", "w", **profile) as dst:
            dst.write(array, 1)


def reference(dem: np.ndarray):
    """A plain numpy Horn: float64, 1-px linear extrapolation by np.pad, gdaldem's formulas."""
    z = np.pad(dem.astype(np.float64), 1, mode="reflect", reflect_type="odd")  # 2·edge − inner
    nw, n, ne = z[:-2, :-2], z[:-2, 1:-1], z[:-2, 2:]
    w, e = z[1:-1, :-2], z[1:-1, 2:]
    sw, s, se = z[2:, :-2], z[2:, 1:-1], z[2:, 2:]
    dzdx = ((ne + 2 * e + se) - (nw + 2 * w + sw)) / (8 * RES)  # east
    dzdy = ((nw + 2 * n + ne) - (sw + 2 * s + se)) / (8 * RES)  # north
    slope = np.degrees(np.arctan(np.hypot(dzdx, dzdy)))
    aspect = np.degrees(np.arctan2(-dzdx, -dzdy)) % 360.0  # downslope, clockwise from north
    aspect[(dzdx == 0) & (dzdy == 0)] = ASPECT_FLAT
    alt, az = np.radians(45.0), np.radians(315.0)
    cang = (np.sin(alt) - np.cos(alt) * (dzdx * np.sin(az) + dzdy * np.cos(az))) / np.sqrt(
        1 + dzdx**2 + dzdy**2
    )
    hill = 1 + 254 * np.maximum(cang, 0)
    return slope.astype(np.float32), aspect.astype(np.float32), hill.astype(np.float32)


def gdaldem(src: Path, out: Path, product: str) -> Path:
    dst = out / f"gdaldem_{product}.tif"
    subprocess.run(
        ["gdaldem", product, str(src), str(dst), "-compute_edges", "-q", "-of", "GTiff"],
        check=True,
    )
    return dst


# --------------------------------------------------------------------------------------------------
# Measuring


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def differences(products, ref):
    """Largest |difference| from gdaldem: slope °, aspect ° where gdaldem is not flat, DN."""
    slope, aspect, hill = products
    g_slope, g_aspect, g_hill = ref
    valid = g_slope != GDAL_NODATA
    d_slope = float(np.abs(slope[valid] - g_slope[valid]).max())
    sloped = valid & (g_aspect != GDAL_NODATA)
    d = np.abs(aspect[sloped].astype(np.float64) - g_aspect[sloped]) % 360
    d_aspect = float(np.minimum(d, 360 - d).max())
    g_flat = valid & (g_aspect == GDAL_NODATA)
    flat_mismatch = int(np.count_nonzero((aspect == ASPECT_FLAT) != g_flat))
    dn = np.abs(hillshade_to_uint8(hill).astype(np.int16) - g_hill.astype(np.int16))
    return d_slope, d_aspect, flat_mismatch, int(dn.max()), int(np.count_nonzero(dn))


def load_average() -> str:
    """1-minute load average (Linux), to judge whether other work shared the cores."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def fmt_t(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f} ms" if seconds < 10 else f"{seconds:8.2f} s "


def run_size(n: int, repeat: int, tmp: Path, have_gdaldem: bool) -> None:
    t0 = time.perf_counter()
    dem = fractal_dem(n)
    src = tmp / f"dem_{n}.tif"
    write_tif(src, dem)
    flat = int(np.count_nonzero(dem == dem.min()))
    built = time.perf_counter() - t0
    print(f"\n=== {n}×{n} DEM, 10 m, float32 ({dem.nbytes / 2**20:.0f} MiB), "
          f"{dem.min():.0f}–{dem.max():.0f} m, lake {flat:,} px  (built in {built:.1f} s)")

    load_before = load_average()
    rows = []  # (method, seconds)
    t_ours = median_time(lambda: ours(dem), repeat)
    rows.append(("ours terrain(), all 3 (default threads)", t_ours))
    t_ours1 = median_time(lambda: ours(dem, threads=1), repeat)
    rows.append(("ours terrain(), all 3 (1 thread)", t_ours1))
    t_e2e = median_time(lambda: ours_end_to_end(src, tmp), repeat)
    rows.append(("ours end to end: read + all 3 + 3 GeoTIFF writes", t_e2e))
    t_ref = median_time(lambda: reference(dem), max(1, min(repeat, 3)))
    rows.append(("plain numpy float64 reference, all 3", t_ref))
    t_gd = {}
    if have_gdaldem:
        for product in ("slope", "aspect", "hillshade"):
            t_gd[product] = median_time(lambda p=product: gdaldem(src, tmp, p), repeat)
        rows.append(("gdaldem CLI slope + aspect + hillshade (3 calls)", sum(t_gd.values())))

    print(f"  (1-min load average {load_before} before, {load_average()} after the timings)")
    tracemalloc.start()
    products = ours(dem)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    print(f"{'method':<52} {'median':>11}   {'vs ours':>8}")
    for name, t in rows:
        print(f"{name:<52} {fmt_t(t)}   {t / t_ours:7.2f}×")
    if t_gd:
        each = ", ".join(f"{p} {fmt_t(t).strip()}" for p, t in t_gd.items())
        print(f"  gdaldem per product: {each}")
        print(f"  ratio gdaldem/ours: {sum(t_gd.values()) / t_ours:.2f}× in memory, "
              f"{sum(t_gd.values()) / t_e2e:.2f}× end to end (both read and write GeoTIFFs)")
    print(f"  ratio reference/ours: {t_ref / t_ours:.2f}×")
    print(f"  ours peak memory allocated during terrain(): {peak / 2**20:.0f} MiB "
          f"= {peak / dem.nbytes:.2f}× the DEM (3.00× is the three outputs)")

    if t_gd:
        ref = tuple(read_tif(tmp / f"gdaldem_{p}.tif") for p in ("slope", "aspect", "hillshade"))
        print(f"  {'max difference from gdaldem (all px, borders too)':<50} {'slope °':>9} "
              f"{'aspect °':>9} {'flat≠':>6} {'hill DN':>8} {'px ≠':>7}")
        for name, prods in (("ours", products), ("plain reference", reference(dem))):
            ds, da, fm, dn, ndn = differences(prods, ref)
            print(f"  {name:<50} {ds:9.2e} {da:9.2e} {fm:6d} {dn:8d} {ndn:7d}")
    del dem, products


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per method (median)")
    args = ap.parse_args(argv)
    have_gdaldem = shutil.which("gdaldem") is not None
    if have_gdaldem:
        version = subprocess.run(["gdalinfo", "--version"], capture_output=True, text=True)
        print(f"gdaldem: {version.stdout.strip()}")
    else:
        print("NOTE: gdaldem is not on PATH (apt-get install gdal-bin): "
              "its times and the differences from it are skipped")
    print(f"numpy {np.__version__}, {os.cpu_count()} cores, "
          f"median of {args.repeat} after 1 warm-up (reference: median of ≤ 3)")
    with tempfile.TemporaryDirectory(prefix="bench_terrain_") as tmp:
        for n in args.sizes:
            run_size(n, args.repeat, Path(tmp), have_gdaldem)


if __name__ == "__main__":
    main()
