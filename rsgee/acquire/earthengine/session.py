"""Connecting to Earth Engine: project, credentials, endpoint and connection pool.

Requests go to the endpoint Earth Engine's documentation recommends for what they compute
(:func:`default_endpoint`): composites over time — medians, means, modes, cloud masks — are "complex
queries", which cost more EECU-time on the high-volume endpoint (it caches fewer intermediate results),
so they go to the standard one; the high-volume endpoint is for many small queries of stored data
without aggregation, such as a mosaic of DEM tiles. Both allow 40 concurrent requests per project.
``--endpoint`` picks one, ``--ee-url`` points the real client at any base URL, and ``--no-auth``
sends no credentials (private endpoints and the offline Earth Engine of :mod:`rsgee.testing.earthengine`).
Credentials come from a JSON file (``--service-account`` or ``GOOGLE_APPLICATION_CREDENTIALS``) or from
``earthengine authenticate``; key material is never printed or logged. The file may be a
service-account key, or — the usual content of ``GOOGLE_APPLICATION_CREDENTIALS`` — the
``authorized_user`` file of ``gcloud auth application-default login`` or an ``external_account``
(workload identity federation) file; those two are loaded with google-auth's loader for their type
(what ``google.auth.default()`` would pick), so that only the file types rsgee names are accepted.

A refresh may only ask for scopes the login granted, or Google answers ``invalid_scope``: an
``authorized_user`` file is loaded with no scopes of rsgee's (a default ``gcloud auth
application-default login`` grants ``cloud-platform``, which Earth Engine accepts), as the
earthengine-api loads it; an ``external_account`` token is minted with ``cloud-platform`` alone,
since Google's token exchange needs a scope; service-account keys keep the earthengine-api's
scopes (a service account's token is not limited to what a login granted).

A workload tag (``--workload-tag``, else the client's own from ``ee.data.setWorkloadTag``) labels
every computePixels request and batch task, so that a project's Earth Engine usage can be told
apart by run in Cloud Monitoring.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import ee
import google.auth.exceptions

from rsgee.acquire import ENDPOINT_NAMES
from rsgee.catalog import SourceSpec
from rsgee.errors import RsgeeError, redact_urls

log = logging.getLogger("rsgee")

STANDARD_URL = "https://earthengine.googleapis.com"
HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
#: ``--endpoint`` names → base URLs.
ENDPOINTS = dict(zip(ENDPOINT_NAMES, (STANDARD_URL, HIGH_VOLUME_URL)))
#: Composites that reduce every pixel's stack of images: aggregations, "complex queries" in Earth Engine's words.
_AGGREGATING = ("mean", "median", "mode")
#: Earth Engine's default limit of concurrent requests per project.
MAX_WORKERS = 40
#: Concurrent requests when none are asked for: room for the project's other work within its limit.
DEFAULT_WORKERS = 16
#: Interactive requests (computePixels) are cut off by the server after about 5 minutes; the client
#: waits longer, so that an answer arriving near that limit is received instead of paid for twice.
DEFAULT_TIMEOUT_S = 330.0
#: What the manifest calls each kind of credentials file (its JSON "type").
_FILE_TYPES = {"service_account": "service account", "authorized_user": "authorized user",
               "external_account": "external account"}
#: The scopes Earth Engine's REST methods (computePixels, image:export) accept besides the read-only ones.
EARTHENGINE_SCOPE = "https://www.googleapis.com/auth/earthengine"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: What fixes credentials whose refresh asks for scopes their login did not grant.
LOGIN_WITH_SCOPES = f"gcloud auth application-default login --scopes={EARTHENGINE_SCOPE},{CLOUD_PLATFORM_SCOPE}"
#: Earth Engine's rule for a workload tag: what ``ee.data.setWorkloadTag`` accepts (its docstring also
#: allows capitals and dots, which the client's own check refuses).
_WORKLOAD_TAG = re.compile(r"[a-z0-9]|[a-z0-9][-_a-z0-9]{0,61}[a-z0-9]")


class CredentialsError(RsgeeError):
    """Credentials are missing, unreadable, or refused by Google's token endpoint."""


@dataclass(frozen=True)
class SessionConfig:
    """How to reach Earth Engine.

    Attributes:
        project: Google Cloud project with Earth Engine enabled (``--project`` / ``EE_PROJECT``).
        service_account: path of a credentials JSON file (service-account key, authorized_user or
            external_account), or None for the credentials of ``earthengine authenticate``.
        url: API base URL (``--ee-url``); overrides ``endpoint``.
        endpoint: "standard" or "highvolume"; ``rsgee export`` chooses per source with
            :func:`default_endpoint`.
        auth: False sends no credentials at all.
        workers: concurrent requests, which also sizes the HTTP connection pool.
        timeout_s: per-request deadline in seconds; keep it above the server's ~300 s limit.
        workload_tag: label of every request and task (``--workload-tag``); None leaves the
            client's own, if any (see :meth:`tag`).
    """

    project: str | None = None
    service_account: Path | None = None
    url: str | None = None
    auth: bool = True
    workers: int = DEFAULT_WORKERS
    timeout_s: float = DEFAULT_TIMEOUT_S
    workload_tag: str | None = None
    endpoint: str = "standard"

    def __post_init__(self) -> None:
        if self.workload_tag:
            check_workload_tag(self.workload_tag)
        if self.endpoint not in ENDPOINTS:
            raise RsgeeError(f"--endpoint {self.endpoint!r} is not one of {', '.join(ENDPOINTS)}")

    @classmethod
    def from_env(cls, project=None, service_account=None, url=None, auth=True, workers=DEFAULT_WORKERS,
                 timeout_s=DEFAULT_TIMEOUT_S, workload_tag=None, endpoint="standard"):
        """Fill unset values from EE_PROJECT, GOOGLE_APPLICATION_CREDENTIALS and RSGEE_EE_URL."""
        key = service_account or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        return cls(project or os.environ.get("EE_PROJECT") or None, Path(key) if key and auth else None,
                   url or os.environ.get("RSGEE_EE_URL") or None, auth, workers, timeout_s, workload_tag or None,
                   endpoint)

    def base_url(self) -> str:
        """Where requests go: ``url`` if given, else the endpoint's URL."""
        return self.url or ENDPOINTS[self.endpoint]

    def tag(self) -> str | None:
        """The workload tag requests carry: ``workload_tag``, else the one set with ``ee.data.setWorkloadTag``.

        Read when requests are made, as the client does, so that a tag set in Python before an export counts.
        """
        return self.workload_tag or ee.data.getWorkloadTag() or None

    def describe(self) -> dict:
        """What the manifest records (never credentials, not even those inside the URL); the workload tag if any."""
        if not self.auth:
            auth = "none"
        elif self.service_account is None:
            auth = "user"
        else:
            auth = _FILE_TYPES.get(_file_type(self.service_account), "credentials file")
        described = {"project": self.project, "endpoint": redact_urls(self.base_url()), "auth": auth}
        tag = self.tag()
        return {**described, "workload_tag": tag} if tag else described


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
        ee.Initialize(credentials=credentials, url=config.base_url(), project=config.project)
        ee.data.setDeadline(int(config.timeout_s * 1000))  # rebuilds the API resource with the timeout
    except google.auth.exceptions.RefreshError as exc:
        raise refused(exc) from None
    except ee.EEException as exc:
        raise RsgeeError(f"Earth Engine refused to initialise: {_first_line(exc)}") from None
    except (ConnectionError, TimeoutError, OSError) as exc:
        where = redact_urls(config.base_url())
        raise RsgeeError(f"cannot reach Earth Engine at {where} ({_first_line(exc)}); "
                         "check the network or --ee-url") from None
    _tune_requests_session(config.workers)


def default_endpoint(specs: Iterable[SourceSpec], via: str = "download") -> str:
    """The endpoint Earth Engine's documentation recommends for a run over ``specs``.

    "standard" where any source aggregates images (a mean, median or mode, or a cloud mask): the
    high-volume endpoint caches fewer intermediate results, so such complex queries cost more EECU-time
    there. "highvolume" only where every source is a mosaic of stored images (the DEM), the small
    non-aggregating queries it is meant for. Batch tasks start on the standard endpoint (they compute in
    the batch environment whichever endpoint starts them). One endpoint per run: the ee client holds one.
    """
    if via == "batch" or any(spec.composite in _AGGREGATING or spec.cloud_mask is not None for spec in specs):
        return "standard"
    return "highvolume"


def refused(exc: BaseException) -> CredentialsError:
    """The one-line error for credentials that Google's token endpoint refused (expired, revoked, or
    asked for scopes their login did not grant: ``invalid_scope``)."""
    reason = _first_line(exc).rstrip(".")
    if "invalid_scope" in reason:
        return CredentialsError(f"Google refused the scopes the Earth Engine credentials asked for ({reason}): their "
                                f"login did not grant them; run `{LOGIN_WITH_SCOPES}` and use the file it writes "
                                "(GOOGLE_APPLICATION_CREDENTIALS or --service-account), or `earthengine authenticate`")
    return CredentialsError(f"Google refused the Earth Engine credentials ({reason}): run "
                            "`earthengine authenticate` (or `gcloud auth application-default login` for a "
                            "GOOGLE_APPLICATION_CREDENTIALS file), or pass --service-account KEY.json")


def check_workload_tag(tag: str) -> str:
    """``tag`` if Earth Engine takes it as a workload tag; else a one-line error that offers one it takes."""
    if _WORKLOAD_TAG.fullmatch(tag):
        return tag
    fixed = re.sub(r"[^a-z0-9_-]+", "-", tag.lower()).strip("-_")[:63].rstrip("-_") or "rsgee"
    raise RsgeeError(f"--workload-tag {tag!r} is not a workload tag Earth Engine accepts (1–63 lowercase letters, "
                     f"digits, '-' and '_', starting and ending with a letter or digit); try --workload-tag {fixed}")


def _file_type(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("type")
    except (OSError, ValueError, AttributeError):
        return None


def _credentials(config: SessionConfig):
    if config.service_account is not None:
        return _file_credentials(config.service_account)
    try:
        return ee.data.get_persistent_credentials()
    except ee.EEException:
        raise CredentialsError("no Earth Engine credentials: run `earthengine authenticate`, or pass --service-account "
                               "KEY.json (or set GOOGLE_APPLICATION_CREDENTIALS)") from None


def _file_credentials(path: Path):
    """A credentials file by its ``type``: service-account keys through ee, the others through google-auth."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CredentialsError(f"credentials file {path} not found") from None
    except (OSError, ValueError):
        raise CredentialsError(f"{path} is not a JSON credentials file; download a service-account key from the "
                               "Cloud console or run `gcloud auth application-default login`") from None
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        if not info.get("client_email"):
            raise CredentialsError(f"{path} is not a service-account JSON key (no client_email); download a key for "
                                   "the service account from the Cloud console")
        try:
            return ee.ServiceAccountCredentials(info["client_email"], key_file=str(path))
        except Exception:  # the library's message may quote key material: never show it
            raise CredentialsError(f"{path}: the service-account key could not be loaded") from None
    loaders = {"authorized_user": _authorized_user, "external_account": _external_account}
    if kind not in loaders:
        raise CredentialsError(f"{path}: credentials of type {kind!r} are not supported (expected a service_account, "
                               "authorized_user or external_account file)")
    try:
        return loaders[kind](info)
    except (ValueError, KeyError, google.auth.exceptions.GoogleAuthError) as exc:
        raise CredentialsError(f"{path}: the {kind} credentials could not be loaded ({_first_line(exc)})") from None


def _authorized_user(info: dict):
    """What ``gcloud auth application-default login`` writes: a refresh token and an OAuth client.

    No scopes are asked for (a file's own ``scopes`` list still is): the refresh gets what the login
    granted, and asking for more, such as the earthengine-api's Drive and Cloud Storage scopes, is
    refused with ``invalid_scope``.
    """
    from google.oauth2 import credentials

    return credentials.Credentials.from_authorized_user_info(info)


def _external_account(info: dict):
    """Workload identity federation, by credential source, as ``google.auth.default()`` chooses it."""
    from google.auth import aws, identity_pool, pluggable

    source = info.get("credential_source") or {}
    if str(source.get("environment_id", "")).startswith("aws"):
        loader = aws.Credentials
    elif "executable" in source:
        loader = pluggable.Credentials
    else:
        loader = identity_pool.Credentials
    return loader.from_info(info, scopes=[CLOUD_PLATFORM_SCOPE])  # the exchange needs one; Earth Engine takes it


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
        log.warning("earthengine-api %s has no ee.data._get_state().requests_session: the connection pool keeps "
                    "its default size (expect 'Connection pool is full' warnings); install the earthengine-api "
                    "version setup.cfg names", ee.__version__)


def _first_line(exc: BaseException) -> str:
    """The exception's first line, redacted: client libraries quote the URL they failed on.

    A message given with more arguments is taken alone (google-auth's errors add the token endpoint's raw answer).
    """
    text = (exc.args[0] if len(exc.args) > 1 and isinstance(exc.args[0], str) else str(exc)).strip()
    return redact_urls(text.splitlines()[0]) if text else type(exc).__name__
