"""What ``rsgee export --dry-run`` prints: each AOI's grid and, for Earth Engine, the size of the job.

The size is what a fresh export asks of Earth Engine — computePixels requests and the bytes of
their answers, or batch tasks and their files before compression — so that a user sees the cost
before spending it. Blocks or tasks a re-run would skip are counted too. The last line names the
endpoint the requests would go to (and why: ``--ee-url``, ``--endpoint``, or the default for these
sources) and the workload tag they would carry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from rsgee.acquire.aoi import AOI
from rsgee.catalog import SourceSpec


@dataclass
class Plan:
    """An export's plan: per AOI its grid, folder, tiles and (Earth Engine) requests or tasks and bytes, the total,
    and where the requests would go. :meth:`lines` is what ``rsgee export --dry-run`` prints, :meth:`as_dict`
    what ``--json`` prints."""

    source: str
    via: str
    aois: list[dict] = field(default_factory=list)
    total: dict = field(default_factory=dict)
    endpoint: str | None = None
    endpoint_reason: str | None = None
    workload_tag: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        unit = "batch task(s)" if self.via == "batch" else "computePixels requests"
        lines = []
        for a in self.aois:
            text = f"{a['name']}: {a['area_km2']:,.1f} km², {a['grid']}, {a['width']}×{a['height']} px → {a['folder']}"
            if self.source == "earthengine" and self.via == "batch":
                text += f"; {a['requests']} {unit}, {_size(a['bytes'])} of GeoTIFF before compression"
                if a["problems"]:
                    text += f"; over Earth Engine's per-file limits ({a['problems'][0]}): split it or use --via download"
            elif self.source == "earthengine":
                text += f"; {a['requests']:,} {unit}, {_size(a['bytes'])} to download"
            lines.append(text)
        if self.source == "earthengine":
            what = "to download" if self.via != "batch" else "of GeoTIFF before compression"
            t = self.total
            lines.append(f"total: {t['aois']} AOI(s), {t['tiles']:,} tiles, {t['requests']:,} {unit}, "
                         f"{_size(t['bytes'])} {what}")
            lines.append(f"Earth Engine endpoint {self.endpoint} ({self.endpoint_reason}), "
                         + (f"workload tag {self.workload_tag}" if self.workload_tag else "no workload tag"))
        return lines


def dry_run(aois: Sequence[AOI], specs: Sequence[SourceSpec], out_dir: Path, source: str, via: str,
            ee_url: str | None = None, workload_tag: str | None = None, endpoint: str | None = None) -> Plan:
    """The plan of an export: every AOI's grid and tiles and, for Earth Engine, its requests or tasks with
    bytes, the total, the endpoint and the workload tag (an invalid tag is refused here, as a run would)."""
    from rsgee.acquire.earthengine.batch import batch_files
    from rsgee.acquire.earthengine.download import download_estimate
    from rsgee.acquire.earthengine.session import SessionConfig, default_endpoint

    plan = Plan(source, via)
    for aoi in aois:
        grid = aoi.grid()
        planned = {"name": aoi.name, "area_km2": aoi.area_km2, "grid": grid.describe(), "epsg": grid.epsg,
                   "width": grid.width, "height": grid.height, "tiles": sum(1 for _ in grid.tiles()),
                   "folder": str(out_dir / aoi.name)}
        if source == "earthengine" and via == "batch":
            files = batch_files(aoi.name, grid, specs)
            planned.update(requests=len(files), bytes=sum(f.nbytes for f in files),
                           problems=[f.problem() for f in files if f.problem()])
        elif source == "earthengine":
            n, size = download_estimate(grid, specs)
            planned.update(requests=n, bytes=size, problems=[])
        plan.aois.append(planned)
    plan.total = {"aois": len(aois), "tiles": sum(a["tiles"] for a in plan.aois)}
    if source == "earthengine":
        plan.total.update(requests=sum(a["requests"] for a in plan.aois), bytes=sum(a["bytes"] for a in plan.aois))
        chosen = endpoint or default_endpoint(specs, via)
        session = SessionConfig.from_env(url=ee_url, workload_tag=workload_tag, endpoint=chosen)
        if session.url:
            plan.endpoint_reason = "--ee-url"
        elif endpoint:
            plan.endpoint_reason = f"--endpoint {endpoint}"
        else:
            plan.endpoint_reason = f"{chosen}, the default for " + (
                "batch tasks" if via == "batch" else "composites" if chosen == "standard" else "stored-image mosaics")
        plan.endpoint, plan.workload_tag = session.describe()["endpoint"], session.tag()
    return plan


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes} B"
