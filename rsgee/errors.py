"""The one exception type the CLI turns into a one-line message.

Anything a user can cause (a bad AOI, a bad catalog, a missing file) raises a subclass of
:class:`RsgeeError` whose message names the problem and, where there is one, the fix. Any other
exception is a bug and is reported as such.
"""


class RsgeeError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class CatalogError(RsgeeError):
    """catalog.yaml is missing, malformed or inconsistent."""


class AOIError(RsgeeError):
    """An area of interest cannot be parsed or is not usable."""


class GridError(RsgeeError):
    """No valid UTM grid exists for an AOI (antimeridian, poles, too wide)."""
