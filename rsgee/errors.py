"""The one exception type the CLI turns into a one-line message.

Anything a user can cause (a bad AOI, a bad catalog, a missing file) raises a subclass of
:class:`RsgeeError` whose message names the problem and, where there is one, the fix. Any other
exception is a bug and is reported as such. Messages, logs and manifests pass URLs through
:func:`redact_urls` first: a URL may carry a user name and password. :func:`check_number` is the
range check every numeric option goes through, from the command line and from Python alike.

Two more ways a command stops are the environment's, not the data's: :class:`Interrupted` (Ctrl-C or
SIGTERM, exit status 128 + the signal) and :class:`StorageError` (a full disk or an output folder that
takes no writes, from :func:`unwritable`); both name what to do next.
"""

import errno
import math
import numbers
import re
import signal
from pathlib import Path


class RsgeeError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class CatalogError(RsgeeError):
    """catalog.yaml is missing, malformed or inconsistent."""


class AOIError(RsgeeError):
    """An area of interest cannot be parsed or is not usable."""


class GridError(RsgeeError):
    """No valid UTM grid exists for an AOI (antimeridian, poles, too wide)."""


#: How to carry on after an interrupt or a full disk, unless the command knows better (training: --resume).
RERUN = "re-run the same command to resume"


class Interrupted(BaseException):
    """A command stopped by SIGTERM (or, from training, by either signal) after cleaning up.

    SIGTERM is what SLURM, Kubernetes, ``timeout`` and a closed terminal send; ``rsgee`` raises this
    from its handler so that every ``finally`` runs, as for Ctrl-C. It is not a KeyboardInterrupt,
    which click would turn into "Aborted" and Lightning into ``sys.exit(1)``: both would lose which
    signal it was and what to do next.
    """

    def __init__(self, signum: int = signal.SIGTERM, advice: str = RERUN):
        super().__init__(signum, advice)
        self.signum, self.advice = signum, advice

    @property
    def status(self) -> int:
        """The exit status a shell reports for this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}; {self.advice}"


class StorageError(RsgeeError):
    """A write failed for want of room or permission: the fix is on that disk, not in the data."""

    def resumed(self, advice: str) -> "StorageError":
        """The same error, saying how this command carries on (training: with --resume) instead of :data:`RERUN`."""
        return StorageError(str(self).replace(RERUN, advice))


#: What a failed write says about where it wrote, by errno. ENOSPC, EDQUOT and EROFS only ever come from
#: writes; the others may come from reads too, so callers pass only errors of their own writes.
_UNWRITABLE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "not writable (read-only file system)", errno.EACCES: "not writable (permission denied)",
               errno.EPERM: "not writable (operation not permitted)"}
WRITE_ONLY_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def unwritable(path: str | Path | None, exc: BaseException, advice: str = RERUN) -> StorageError | None:
    """The one-line error for a failed write to ``path``, or None when ``exc`` says nothing about the disk.

    A full disk wants space, a read-only or foreign folder another ``--out``; a file where a folder
    should be is named, since mkdir only says "not a directory". ``advice`` says how to carry on.
    """
    code = getattr(exc, "errno", None)
    failed = f"cannot write {path}" if path else "a write failed"
    if code in (errno.ENOTDIR, errno.EEXIST) and path:
        blocker = next((p for p in (Path(path), *Path(path).parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            return None
        return StorageError(f"{failed}: {blocker} is a file, not a folder; choose another --out")
    problem = _UNWRITABLE.get(code)
    if problem is None:
        return None
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"{failed}: {problem}; free space {'there' if path else 'on its disk'}, then {advice}")
    return StorageError(f"{failed}: {problem}; choose another --out or make it writable")


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
