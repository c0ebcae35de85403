"""What ``rsgee export --dry-run`` prints: each AOI's grid and, for Earth Engine, the size of the job.

The size is what a fresh export asks of Earth Engine — computePixels requests and the bytes of
their answers, or batch tasks and their files before compression — so that a user sees the cost
before spending it. Blocks or tasks a re-run would skip are counted too. The last line names the
endpoint the requests would go to (and why: ``--ee-url``, ``--endpoint``, or the default for these
sources) and the workload tag they would carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rsgee.acquire.aoi import AOI
from rsgee.catalog import SourceSpec


def dry_run(aois: Sequence[AOI], specs: Sequence[SourceSpec], out_dir: Path, source: str, via: str,
            ee_url: str | None = None, workload_tag: str | None = None, endpoint: str | None = None) -> list[str]:
    """One line per AOI (grid, and requests or tasks with bytes for Earth Engine), then the total and,
    for Earth Engine, the endpoint and workload tag (an invalid tag is refused here, as a run would)."""
    from rsgee.acquire.earthengine.batch import batch_files
    from rsgee.acquire.earthengine.download import download_estimate
    from rsgee.acquire.earthengine.session import SessionConfig, default_endpoint

    lines, requests, nbytes, tiles = [], 0, 0, 0
    unit = "batch task(s)" if via == "batch" else "computePixels requests"
    for aoi in aois:
        grid = aoi.grid()
        text = f"{aoi.name}: {aoi.area_km2:,.1f} km², {grid.describe()}, {grid.width}×{grid.height} px → {out_dir / aoi.name}"
        if source == "earthengine":
            if via == "batch":
                files = batch_files(aoi.name, grid, specs)
                n, size = len(files), sum(f.nbytes for f in files)
                problems = [f.problem() for f in files if f.problem()]
                text += f"; {n} {unit}, {_size(size)} of GeoTIFF before compression"
                if problems:
                    text += f"; over Earth Engine's per-file limits ({problems[0]}): split it or use --via download"
            else:
                n, size = download_estimate(grid, specs)
                text += f"; {n:,} {unit}, {_size(size)} to download"
            requests, nbytes = requests + n, nbytes + size
        tiles += sum(1 for _ in grid.tiles())
        lines.append(text)
    if source == "earthengine":
        what = "to download" if via != "batch" else "of GeoTIFF before compression"
        lines.append(f"total: {len(aois)} AOI(s), {tiles:,} tiles, {requests:,} {unit}, {_size(nbytes)} {what}")
        chosen = endpoint or default_endpoint(specs, via)
        session = SessionConfig.from_env(url=ee_url, workload_tag=workload_tag, endpoint=chosen)
        if session.url:
            why = "--ee-url"
        elif endpoint:
            why = f"--endpoint {endpoint}"
        else:
            why = f"{chosen}, the default for " + ("batch tasks" if via == "batch" else
                                                   "composites" if chosen == "standard" else "stored-image mosaics")
        tag = session.tag()
        lines.append(f"Earth Engine endpoint {session.describe()['endpoint']} ({why}), "
                     + (f"workload tag {tag}" if tag else "no workload tag"))
    return lines


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes} B"
