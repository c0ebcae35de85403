"""Optional extras: a command that needs a missing one says, in one line, what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rsgee.errors import RsgeeError
from rsgee.optional import MissingExtra, require

WITHOUT_LIGHTNING = """
import sys
sys.modules["lightning"] = None  # as if `pip install rsgee` had been run without the train extra
from rsgee.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", [["train", "fusion", "archive", "--out", "run"], ["train", "seg", "archive",
                                     "--out", "run"], ["evaluate", "seg", "run"], ["generate", "run", "archive"],
                                     ["demo", "--out", "demo"]])
def test_commands_without_the_train_extra_name_it(command, tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_LIGHTNING, *command], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0], result.stderr
    assert "lightning not installed" in lines[0] and "pip install 'rsgee[train]'" in lines[0]
    assert not (tmp_path / "demo").exists()  # the demo checks before exporting anything


def test_require_passes_when_installed_and_is_a_user_error():
    require("train")  # the test environment has the extra
    assert issubclass(MissingExtra, RsgeeError)
