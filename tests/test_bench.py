"""Benchmarks measure and report; these tests check the reports, never the speed."""

import json

import pytest

from puppet.cli import main

pytestmark = pytest.mark.slow


def test_bench_render_reports_stages_and_machine(tmp_path, capsys):
    out = tmp_path / "render.json"
    assert main(["bench", "render", "--size", "64", "--frames", "4", "--warmup", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for row in ("total", "pose", "raster"):
        assert f"\n{row} " in table
    report = json.loads(out.read_text())
    assert report["engine"] == "mesh" and report["size"] == 64 and report["frames"] == 4
    assert report["engine_info"]["backend"] == "moderngl"
    total = report["stages_ms"]["total"]
    assert 0 < total["p50"] <= total["p95"]
    # The engine's own breakdown cannot exceed the whole call.
    assert report["stages_ms"]["pose"]["mean"] + report["stages_ms"]["raster"]["mean"] <= total["mean"] * 1.05
    assert report["bake_s"] > 0 and report["machine"]["cores"] >= 1
