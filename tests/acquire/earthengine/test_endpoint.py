"""Which Earth Engine endpoint requests go to: the one the documentation recommends per source (composites
to the standard endpoint, mosaics of stored images to the high-volume one), ``--endpoint`` to choose, and
``--ee-url`` over both; what ``ee.Initialize`` is given and what ``--dry-run`` reports."""

from __future__ import annotations

import inspect
from unittest import mock

import ee
import pytest
from click.testing import CliRunner

from rsgee.acquire.earthengine import session as session_module
from rsgee.acquire.earthengine.session import (
    HIGH_VOLUME_URL,
    STANDARD_URL,
    SessionConfig,
    default_endpoint,
    initialize,
)
from rsgee.acquire import WINDOW
from rsgee.acquire.sources import make_block_source
from rsgee.api import export
from rsgee.catalog import load_catalog, parse_catalog
from rsgee.cli import cli, main
from rsgee.errors import RsgeeError

CATALOG = load_catalog()
AOI = "v=10.60,46.60,10.63,46.62"
#: make_block_source takes every option explicitly: rsgee.api.export's defaults are the only ones.
EXPORT_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(export).parameters.items()
                   if name in inspect.signature(make_block_source).parameters and name != "source"}
EXPORT_DEFAULTS.update(start=WINDOW[0], end=WINDOW[1], destination=None, catalog=None)


@pytest.mark.parametrize(
    "names, via, expected",
    [
        (["s1", "s2", "lulc", "dem"], "download", "standard"),  # mean, median, mode: complex queries
        (["s2"], "download", "standard"),
        (["lulc"], "download", "standard"),
        (["dem"], "download", "highvolume"),  # a mosaic of stored tiles, no aggregation
        (["dem"], "batch", "standard"),
    ],
)
def test_the_documented_endpoint_per_source(names, via, expected):
    assert default_endpoint([CATALOG[n] for n in names], via) == expected


def test_a_cloud_masked_mosaic_is_a_complex_query():
    data = CATALOG.to_dict()
    data["sources"]["s2"]["composite"] = "mosaic"
    assert default_endpoint([parse_catalog(data)["s2"]]) == "standard"


def test_endpoint_urls_and_the_ee_url_override():
    assert SessionConfig().base_url() == STANDARD_URL == "https://earthengine.googleapis.com"
    assert SessionConfig(endpoint="highvolume").base_url() == HIGH_VOLUME_URL
    assert SessionConfig(endpoint="highvolume", url="http://127.0.0.1:9").describe()["endpoint"] == "http://127.0.0.1:9"
    with pytest.raises(RsgeeError, match=r"^--endpoint 'fast' is not one of standard, highvolume$"):
        SessionConfig(endpoint="fast")


@pytest.mark.parametrize("endpoint, url", [("standard", STANDARD_URL), ("highvolume", HIGH_VOLUME_URL)])
def test_the_client_is_initialised_on_the_endpoint(endpoint, url):
    with mock.patch.object(ee, "Initialize") as init, mock.patch.object(ee.data, "setDeadline"), \
            mock.patch.object(session_module, "_tune_requests_session"):
        initialize(SessionConfig(project="p", auth=False, endpoint=endpoint))
    assert init.call_args.kwargs["url"] == url


@pytest.mark.parametrize(
    "names, options, url",
    [
        (["s1", "s2", "lulc", "dem"], {}, STANDARD_URL),
        (["dem"], {}, HIGH_VOLUME_URL),
        (["s1", "s2", "lulc", "dem"], {"endpoint": "highvolume"}, HIGH_VOLUME_URL),
        (["dem"], {"endpoint": "standard"}, STANDARD_URL),
        (["dem"], {"endpoint": "standard", "ee_url": "http://127.0.0.1:9"}, "http://127.0.0.1:9"),
    ],
)
def test_export_sources_choose_the_endpoint(names, options, url, monkeypatch):
    monkeypatch.delenv("RSGEE_EE_URL", raising=False)
    with mock.patch("rsgee.acquire.earthengine.download.initialize"):
        source = make_block_source("earthengine", names, **dict(EXPORT_DEFAULTS, project="p", auth=False, **options))
    assert source.session.base_url() == url
    assert source.provenance()["earthengine"]["endpoint"] == url  # what manifest.json records


@pytest.mark.parametrize(
    "args, line",
    [
        ([], f"{STANDARD_URL} (standard, the default for composites)"),
        (["--sources", "dem"], f"{HIGH_VOLUME_URL} (highvolume, the default for stored-image mosaics)"),
        (["--endpoint", "highvolume"], f"{HIGH_VOLUME_URL} (--endpoint highvolume)"),
        (["--sources", "dem", "--via", "batch", "--bucket", "rsgee-bk"],
         f"{STANDARD_URL} (standard, the default for batch tasks)"),
        (["--endpoint", "highvolume", "--ee-url", "http://127.0.0.1:9"], "http://127.0.0.1:9 (--ee-url)"),
    ],
)
def test_dry_run_reports_the_endpoint_used(args, line, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RSGEE_EE_URL", raising=False)
    assert main(["export", "--aoi", AOI, "--out", str(tmp_path), "--dry-run", *args]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"Earth Engine endpoint {line}, no workload tag"


def test_help_gives_the_reason_for_the_default():
    out = " ".join(CliRunner().invoke(cli, ["export", "--help"]).output.split())
    assert "--endpoint [standard|highvolume]" in out and "complex queries" in out
    assert "[default: standard when any source is such a composite" in out and "overrides --endpoint" in out
