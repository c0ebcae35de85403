"""rsgee demo on a minimal configuration: every step runs, tables and figures appear, a re-run resumes."""

from __future__ import annotations

import json

import pytest

from rsgee.demo import DEMO_AOIS, DemoSettings, run_demo

pytestmark = pytest.mark.slow

MINIMAL = DemoSettings(split_block=1, fusion_steps=2, fusion_batch=2, seg_steps=2, seg_batch=2, seg_crop=64, workers=1)


@pytest.fixture()
def aois(tmp_path):
    path = tmp_path / "aois.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "valley"},
         "geometry": {"type": "Polygon", "coordinates": [[[10.60, 46.60], [10.66, 46.60], [10.66, 46.64],
                                                          [10.60, 46.64], [10.60, 46.60]]]}}]}))
    return path


def test_the_shipped_demo_aois_are_valid():
    from rsgee.acquire.aoi import parse_aois

    assert [a.name for a in parse_aois([str(DEMO_AOIS)])] == ["bernina", "beauce", "garda"]


def test_demo_runs_every_step_and_resumes(tmp_path, aois):
    messages = []
    result = run_demo(tmp_path / "demo", MINIMAL, aois=aois, progress=False, say=messages.append)
    assert [m[:3] for m in messages if m[1] == "/"] == ["1/7", "2/7", "3/7", "3/7", "4/7", "5/7", "6/7", "6/7", "7/7"]
    assert [(r["model"], r["weights"]) for r in result.fusion_table] == [
        ("constant-mean", "—"), ("class-mean", "—"), ("class-illumination", "—"), ("rs-spade", "raw"),
        ("rs-spade", "ema"), ("pix2pix", "raw"), ("pix2pix", "ema")]
    assert [r["training_set"] for r in result.seg_table] == ["majority-class (baseline)",
                                                             "class-mean-spectrum (baseline)",
                                                             "per-pixel-gaussian (baseline)",
                                                             "real only (True Data)", "real:generated 1:1"]
    assert {p.name for p in result.tables} == {"fusion_table.csv", "fusion_table.md", "seg_table.csv", "seg_table.md"}
    assert {"miou_curves.png", "predictions.png"} <= {p.name for p in result.figures}
    assert all(p.exists() for p in result.tables + result.figures)
    first = (tmp_path / "demo" / "evaluation" / "seg_table.csv").read_text()
    again = run_demo(tmp_path / "demo", MINIMAL, aois=aois, progress=False, say=messages.append)
    assert any("0 generated, 6 already there" in m for m in messages)
    assert (tmp_path / "demo" / "evaluation" / "seg_table.csv").read_text() == first
    assert again.fusion_table == result.fusion_table
