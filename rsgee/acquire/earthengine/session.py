"""Connecting to Earth Engine: project, credentials, endpoint and connection pool.

Pixel downloads go to the high-volume endpoint by default (it is meant for many concurrent,
stateless requests). ``--ee-url`` points the real client at another base URL, and ``--no-auth``
sends no credentials (private endpoints and the loopback fake used by the tests). Credentials come
from a service-account key (``--service-account`` or ``GOOGLE_APPLICATION_CREDENTIALS``) or from
``earthengine authenticate``; key material is never printed or logged.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import ee

from rsgee.errors import RsgeeError

log = logging.getLogger("rsgee")

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
#: Earth Engine's default limit of concurrent requests per project.
MAX_WORKERS = 40


@dataclass(frozen=True)
class SessionConfig:
    """How to reach Earth Engine.

    Attributes:
        project: Google Cloud project with Earth Engine enabled (``--project`` / ``EE_PROJECT``).
        service_account: path of a service-account JSON key, or None for stored user credentials.
        url: API base URL; None means the high-volume endpoint.
        auth: False sends no credentials at all.
        workers: concurrent requests, which also sizes the HTTP connection pool.
        timeout_s: per-request deadline in seconds.
    """

    project: str | None = None
    service_account: Path | None = None
    url: str | None = None
    auth: bool = True
    workers: int = 16
    timeout_s: float = 300.0

    @classmethod
    def from_env(cls, project=None, service_account=None, url=None, auth=True, workers=16, timeout_s=300.0):
        """Fill unset values from EE_PROJECT, GOOGLE_APPLICATION_CREDENTIALS and RSGEE_EE_URL."""
        key = service_account or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        return cls(project or os.environ.get("EE_PROJECT") or None, Path(key) if key and auth else None,
                   url or os.environ.get("RSGEE_EE_URL") or None, auth, workers, timeout_s)

    def describe(self) -> dict:
        """What the manifest records (never credentials)."""
        return {"project": self.project, "endpoint": self.url or HIGH_VOLUME_URL,
                "auth": "none" if not self.auth else ("service account" if self.service_account else "user")}


def initialize(config: SessionConfig) -> None:
    """Initialise the ``ee`` client once per process, or raise a one-line :class:`RsgeeError`."""
    if not 1 <= config.workers <= MAX_WORKERS:
        raise RsgeeError(f"--workers {config.workers} must be within 1…{MAX_WORKERS} (Earth Engine's per-project "
                         "limit of concurrent requests)")
    if not config.project:
        raise RsgeeError("no Earth Engine project: pass --project PROJECT or set EE_PROJECT (a Google Cloud project "
                         "registered for Earth Engine)")
    credentials = _credentials(config) if config.auth else None
    try:
        ee.Initialize(credentials=credentials, url=config.url or HIGH_VOLUME_URL, project=config.project)
        ee.data.setDeadline(int(config.timeout_s * 1000))  # rebuilds the API resource with the timeout
    except ee.EEException as exc:
        raise RsgeeError(f"Earth Engine refused to initialise: {_first_line(exc)}") from None
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise RsgeeError(f"cannot reach Earth Engine at {config.url or HIGH_VOLUME_URL} ({_first_line(exc)}); "
                         "check the network or --ee-url") from None
    _tune_requests_session(config.workers)


def _credentials(config: SessionConfig):
    if config.service_account is not None:
        path = config.service_account
        try:
            email = json.loads(path.read_text(encoding="utf-8"))["client_email"]
        except FileNotFoundError:
            raise RsgeeError(f"service-account key {path} not found") from None
        except (OSError, ValueError, KeyError, TypeError):
            raise RsgeeError(f"{path} is not a service-account JSON key (no client_email); download a key for the "
                             "service account from the Cloud console") from None
        try:
            return ee.ServiceAccountCredentials(email, key_file=str(path))
        except Exception:  # the library's message may quote key material: never show it
            raise RsgeeError(f"{path}: the service-account key could not be loaded") from None
    try:
        return ee.data.get_persistent_credentials()
    except ee.EEException:
        raise RsgeeError("no Earth Engine credentials: run `earthengine authenticate`, or pass --service-account "
                         "KEY.json (or set GOOGLE_APPLICATION_CREDENTIALS)") from None


def _tune_requests_session(workers: int) -> None:
    """One pooled connection per worker thread, and no environment lookups on every request.

    Credentials travel as OAuth headers added by the ee client, so requests' per-request netrc and
    proxy lookups (a quarter of the client's CPU at 200 blocks/s) are dead weight. They are skipped
    unless proxy variables are set, in which case requests keeps honouring them as usual.
    """
    try:
        import requests.adapters

        session = ee.data._get_state().requests_session  # private in earthengine-api; guarded
        adapter = requests.adapters.HTTPAdapter(pool_connections=workers, pool_maxsize=workers)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        if not any(k.lower().endswith("_proxy") for k in os.environ):
            session.trust_env = False
            session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    except (AttributeError, ImportError):
        log.debug("could not tune the Earth Engine HTTP session; expect 'Connection pool is full' warnings")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
