"""Keep freed heap memory in the process, for the array-heavy loops of export, tile and cache.

The pipeline allocates and frees arrays of 0.1–2 MB per tile, thousands of times. glibc's malloc
serves those from fresh ``mmap`` s or returns the heap's top to the system once it frees more than a
few MB, so the next tile page-faults every page back in. On the VMs rsgee was measured on a fault
costs ~2 µs a page: the synthetic scene spent a third of its time faulting (0.33 → 0.23 s a tile with
the setting below; NOTES.md, #14).

:func:`keep_freed_memory` tells glibc to serve arrays up to 32 MB from the heap and to keep up to
256 MB of it free instead of trimming. It is process-wide, so only rsgee's own processes call it
(the ``rsgee`` command and the worker processes it starts); a notebook or training script may call
it too. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Arrays up to this size come from the heap (glibc's largest allowed mmap threshold on 64-bit).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory kept at the heap's top before glibc gives it back.
TRIM_THRESHOLD = 256 * 2**20

_done = False


def keep_freed_memory() -> bool:
    """Set the two malloc thresholds above, once per process; True where glibc took them."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
