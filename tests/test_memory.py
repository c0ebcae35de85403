"""rsgee.memory: the malloc thresholds are set once, and only where glibc has mallopt."""

import sys

import pytest

from rsgee import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_is_taken_by_glibc_and_idempotent():
    assert memory.keep_freed_memory() is True
    assert memory.keep_freed_memory() is True
