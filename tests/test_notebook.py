"""docs/quickstart.ipynb runs from top to bottom, offline, in a fresh kernel of this interpreter.

The notebook is executed with nbclient (the ``test`` extra) in a temporary working directory and with
``TMPDIR`` pointing into ``tmp_path``, so everything it writes (it works in ``tempfile.mkdtemp()``) lands
there. It is committed without outputs, so that its diffs stay readable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")  # the test extra; CI installs it (make test), so these never skip there
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "quickstart.ipynb"
KERNEL = "python3"
#: Appended to the in-memory copy: which interpreter and rsgee the kernel ran, and what the notebook made.
PROBE = """
import json, sys
print(json.dumps({"python": sys.executable, "rsgee": rsgee.__file__, "work": work, "rows": rows,
                  "backend": plt.get_backend(),
                  "prediction": [str(cover.path), cover.status, cover.filled]}, default=str))
"""


def cell_text(cell) -> str:
    """A code cell's printed text and its result's plain-text form."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data"):
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def cell_with(nb, needle: str):
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    return cell


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.metadata.kernelspec.name == KERNEL


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    from jupyter_client.manager import KernelManager

    # The kernelspec must start this interpreter (ipykernel's own spec in sys.prefix says "python", which
    # jupyter_client replaces by sys.executable); a python3 spec elsewhere on JUPYTER_PATH could shadow it.
    command = KernelManager(kernel_name=KERNEL).format_kernel_cmd()
    assert Path(command[0]).resolve() == Path(sys.executable).resolve(), \
        f"kernel {KERNEL!r} would start {command[0]}, not {sys.executable}: check `jupyter kernelspec list`"

    temp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    temp.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the kernel inherits the environment: mkdtemp() lands here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures become outputs
    monkeypatch.delenv("RSGEE_DEBUG", raising=False)
    # One torch thread: on a 2-core machine shared with another busy process, torch's two OpenMP threads made
    # the notebook's 60 training steps take 55-130 s; with one thread they took 3.7 s beside the same process.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    nbclient.NotebookClient(nb, timeout=300, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}}).execute()

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
    probe = json.loads(cell_text(nb.cells[-1]))
    assert Path(probe["python"]).resolve() == Path(sys.executable).resolve()
    assert Path(probe["rsgee"]).resolve() == REPO / "rsgee" / "__init__.py"  # this checkout's rsgee
    work = Path(probe["work"])
    assert work.parent == temp and work.name.startswith("rsgee-quickstart-")

    assert "valley: written (9 tiles)" in cell_text(cell_with(nb, "rsgee.export("))
    assert "{'test': 1, 'train': 9, 'val': 3}" in cell_text(cell_with(nb, "rsgee.tile("))
    rows = probe["rows"]
    assert [(r["model"], r["weights"]) for r in rows] == [  # baselines first, then the run's raw and EMA weights
        ("constant-mean", "—"), ("class-mean", "—"), ("class-illumination", "—"), ("rs-spade", "raw"),
        ("rs-spade", "ema")]
    assert all(r["run"] == "baseline" for r in rows[:3]) and all(r["tiles"] == 1 for r in rows)
    assert all(0 < r["psnr"] < 100 and 0 < r["ssim"] <= 1 for r in rows)
    for model in ("constant-mean", "class-illumination", "rs-spade"):  # the table is shown
        assert model in cell_text(cell_with(nb, "rsgee.evaluate_fusion("))
    path, status, filled = probe["prediction"]
    assert path == "predictions/hill_s2.tif" and status == "written" and filled > 0
    assert probe["backend"].endswith("backend_inline")  # no rsgee call switched the user's matplotlib backend
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the tile and the prediction

    assert not any(cwd.iterdir())  # nothing written beside the notebook's working directory
    import rasterio

    with rasterio.open(work / "predictions" / "hill_s2.tif") as cog:
        assert cog.count == 5 and cog.dtypes == ("uint16",) * 5  # B2 B3 B4 B8 + filled
        assert cog.descriptions == ("B2", "B3", "B4", "B8", "filled")
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert (work / "evaluation" / "fusion_table.csv").exists()
