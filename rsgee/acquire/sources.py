"""The block source behind ``rsgee export``'s ``--source`` options, built in one place.

:func:`rsgee.api.export` (which ``rsgee export`` and ``rsgee predict --aoi`` call) constructs sources here, so
that the Earth Engine session set-up (project, credentials, endpoint, workers, deadline, retries, workload
tag) has one implementation; its defaults are :func:`rsgee.api.export`'s, so every option is given here.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Sequence

from rsgee.errors import RsgeeError, check_number

SOURCES = ("earthengine", "local", "synthetic")


def make_block_source(source: str, names: Sequence[str], *, start: dt.date, end: dt.date, windows: Sequence[str],
                      project: str | None, service_account: str | Path | None, ee_url: str | None, auth: bool,
                      workers: int | None, timeout_s: float, attempts: int, retry_failed: bool, destination,
                      s1_orbit: str, workload_tag: str | None, endpoint: str | None, catalog, inputs: Sequence[str],
                      seed: int, cloud_cover: float, progress: bool):
    """A ready block source for catalog sources ``names``; Earth Engine sources are connected already
    (a missing project or credentials is one error before any AOI starts). ``destination`` (a batch
    :class:`~rsgee.acquire.earthengine.batch.Destination`) selects Earth Engine batch export. Without
    ``endpoint`` ("standard" or "highvolume"), the one Earth Engine recommends for the ``names`` of
    ``catalog`` (a :class:`~rsgee.catalog.Catalog`; None: the shipped one) is used.

    ``workers`` is Earth Engine's concurrent requests (:data:`~rsgee.acquire.earthengine.session.DEFAULT_WORKERS`
    when None), or the synthetic source's worker processes, at most the machine's cores: None or 1 computes the
    tiles in this process, so that a script calling this needs no ``if __name__ == "__main__"`` guard (spawned
    workers re-import the script that started them)."""
    if source not in SOURCES:
        raise RsgeeError(f"unknown source '{source}'; choose {', '.join(SOURCES)}")
    if start >= end:
        raise RsgeeError(f"--start {start} must be before --end {end}")
    if workers is not None:
        check_number("--workers", workers, 1, 40 if source == "earthengine" else None, whole=True)
    check_number("--timeout", timeout_s, 1.0)
    check_number("--attempts", attempts, 1, whole=True)
    if destination is not None and source != "earthengine":
        raise RsgeeError(f"--via batch exports from Earth Engine; it does not apply to --source {source}")
    if source == "synthetic":
        from rsgee.acquire.synthetic import SyntheticSource

        return SyntheticSource(seed=seed, cloud_cover=cloud_cover, start=start, end=end,
                               workers=min(workers or 1, os.cpu_count() or 1))
    if source == "local":
        from rsgee.acquire.local import LocalSource, parse_inputs

        return LocalSource(parse_inputs(inputs))
    from rsgee.acquire.earthengine.download import EarthEngineSource, RetryPolicy, parse_windows
    from rsgee.acquire.earthengine.recipes import RecipeOptions
    from rsgee.acquire.earthengine.session import DEFAULT_WORKERS, SessionConfig, default_endpoint
    from rsgee.catalog import load_catalog

    if endpoint is None:
        catalog = catalog if catalog is not None else load_catalog()
        specs = [catalog[n] for n in names if n in catalog]  # a name the catalog lacks fails later, with its catalog
        endpoint = default_endpoint(specs, "batch" if destination is not None else "download")
    session = SessionConfig.from_env(project, service_account, ee_url, auth, workers or DEFAULT_WORKERS, timeout_s,
                                     workload_tag, endpoint)
    options = RecipeOptions(s1_orbit=None if s1_orbit == "both" else s1_orbit)
    if destination is not None:
        from rsgee.acquire.earthengine.batch import BatchSource

        block_source = BatchSource(session, parse_windows(start, end, windows, names), destination, options=options)
    else:
        block_source = EarthEngineSource(session, parse_windows(start, end, windows, names), options=options,
                                         policy=RetryPolicy(attempts=attempts), retry_failed=retry_failed,
                                         progress=progress)
    block_source.connect()
    return block_source
