"""The one exception type the CLI turns into a one-line message.

Anything a user can cause (a bad AOI, a bad catalog, a missing file) raises a subclass of
:class:`RsgeeError` whose message names the problem and, where there is one, the fix. Any other
exception is a bug and is reported as such. Messages, logs and manifests pass URLs through
:func:`redact_urls` first: a URL may carry a user name and password.
"""

import re


class RsgeeError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class CatalogError(RsgeeError):
    """catalog.yaml is missing, malformed or inconsistent."""


class AOIError(RsgeeError):
    """An area of interest cannot be parsed or is not usable."""


class GridError(RsgeeError):
    """No valid UTM grid exists for an AOI (antimeridian, poles, too wide)."""


#: ``scheme://userinfo@`` — the authority's user part ends at its last ``@`` (passwords may hold one).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#]+@")


def redact_urls(text: object) -> str:
    """``text`` with the ``user:password@`` of every URL in it replaced by ``***@``.

    ``--ee-url https://user:password@host`` is a working way to reach a private endpoint, so it
    must never reach a terminal, a log line or a manifest; exception texts from requests or urllib
    may quote the URL too, so whole messages go through here, not just the URL.
    """
    return _USERINFO.sub(r"\1***@", str(text))
