"""The one exception type the CLI turns into a one-line message.

Anything a user can cause (a bad AOI, a bad catalog, a missing file) raises a subclass of
:class:`RsgeeError` whose message names the problem and, where there is one, the fix. Any other
exception is a bug and is reported as such. Messages, logs and manifests pass URLs through
:func:`redact_urls` first: a URL may carry a user name and password. :func:`check_number` is the
range check every numeric option goes through, from the command line and from Python alike.
"""

import math
import numbers
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


def check_number(option: str, value: object, low: float | None = None, high: float | None = None, *,
                 above: bool = False, below: bool = False, whole: bool = False) -> None:
    """Refuse ``value`` unless it is a finite number (a whole one with ``whole``) within the bounds.

    ``low`` and ``high`` are inclusive unless ``above`` / ``below`` make them strict. The configs call
    this from ``__post_init__``, so the CLI and the Python API refuse the same values with the same
    line, before anything is written. NaN and infinity are always refused: NaN passes every negated
    comparison, and either would end in a run.json or archive.json that is no longer JSON.
    """
    kind = "a whole number" if whole else "a finite number"
    ok = isinstance(value, numbers.Integral if whole else numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (low is None or (value > low if above else value >= low))
    ok = ok and (high is None or (value < high if below else value <= high))
    if ok:
        return
    lo, hi = (f"{bound:g}" if isinstance(bound, float) else bound for bound in (low, high))
    if low is not None and high is not None:
        bounds = f" in {'(' if above else '['}{lo}, {hi}{')' if below else ']'}"
    elif low is not None:
        bounds = f" {'>' if above else '≥'} {lo}"
    elif high is not None:
        bounds = f" {'<' if below else '≤'} {hi}"
    else:
        bounds = ""
    raise RsgeeError(f"{option} {value!r}: use {kind}{bounds}")
