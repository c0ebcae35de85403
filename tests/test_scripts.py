"""A plain Python script runs rsgee without ``if __name__ == "__main__":``: no worker process is started unless asked."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import rsgee

(result,) = rsgee.export(["valley=10.60,46.60,10.63,46.62"], "exports", source="synthetic", progress=False)
assert result.ok, result.line()
summary = rsgee.tile("exports", "archive", split_block=1, progress=False)
print(summary.written)
"""


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_a_script_without_a_main_guard_exports_and_tiles(how, tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT, encoding="utf-8")
    command = [sys.executable, "script.py"] if how == "file" else [sys.executable, "-"]
    result = subprocess.run(command, input=SCRIPT if how == "stdin" else None, capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4"]
    assert (tmp_path / "exports" / "valley" / "manifest.json").exists()
    assert len(list((tmp_path / "archive" / "s2").glob("*.tif"))) == 4
