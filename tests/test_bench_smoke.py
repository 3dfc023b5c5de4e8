"""Smoke test of the benchmarks: the quick footprint runs end to end and reports in shape.

It asserts the report's structure, never a figure: speed is shown by `make bench`, not tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl.config import COMPONENTS, SERVICES
from tests.bench import footprint, run_all, span_cost

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_quick_footprint_reports_every_component_and_the_doc_section(tmp_path: Path) -> None:
    out = tmp_path / "footprint.json"
    assert footprint.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    assert report["benchmark"] == "lab footprint"
    assert {"nproc", "cpu_model", "memory_gb", "python", "date"} <= set(report["machine"])
    assert len(report["runs"]) == 1
    run = report["runs"][0]
    for key in ("services_healthy_s", "locust_healthy_s", "all_healthy_s"):
        assert isinstance(run[key], float) and run[key] > 0, key
    # Idle: everything but the load generator; under load: every component of `make up`.
    assert set(run["idle_rss_mb_by_component"]) >= set(SERVICES) | {"prometheus", "receiver"}
    assert "locust" not in run["idle_rss_mb_by_component"]
    assert set(run["loaded_rss_mb_by_component"]) == set(COMPONENTS)
    assert run["loaded_rss_mb"] == pytest.approx(
        sum(run["loaded_rss_mb_by_component"].values()), abs=1.0
    )
    summary = report["summary"]
    assert summary["healthy_s_all"] == [run["all_healthy_s"]]
    assert isinstance(summary["healthy_goal_met"], bool)
    assert isinstance(summary["memory_goal_met"], bool)
    # CPU: every component measured, idle and loaded, and the totals are their sums.
    assert set(run["loaded_cores_by_component"]) == set(COMPONENTS)
    assert all(v >= 0 for v in run["loaded_cores_by_component"].values())
    assert run["loaded_cores"] == pytest.approx(
        sum(run["loaded_cores_by_component"].values()), abs=0.01
    )
    assert run["loaded_cores"] > 0  # the services served the load
    assert isinstance(summary["cpu_goal_met"], bool)

    # The lab it started is gone: no leftover runtime folder of this run.
    leftover = [p for p in (footprint.BENCH_DIR / "tmp").glob("lab-*") if p.is_dir()]
    assert not any((p / "state.json").exists() and json.loads((p / "state.json").read_text())
                   .get("components") for p in leftover)  # fmt: skip

    # The summary row and the generated doc section are built from this report.
    rows = run_all.summary_rows({"footprint": report})
    assert [r["item"] for r in rows] == [4, 4, 4]  # healthy, memory, CPU
    section = run_all.render_footprint(report)
    assert section.startswith(f"## {run_all.FOOTPRINT} (generated)")
    assert "| **total** |" in section


def test_doc_regeneration_keeps_hand_written_sections(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Benchmarks\n\nold intro\n\n## Instrumentation overhead\n\nhand-written figures\n\n"
        "## Lab footprint (generated)\n\nstale\n"
    )
    meta = {
        "when": "now", "quick": True, "seconds": 60.0, "loadavg_start": [1, 1, 1],
        "loadavg_end": [1, 1, 1],
        "machine": {"nproc": 2, "cpu_model": "x", "memory_gb": 1, "kernel": "k", "python": "3"},
    }  # fmt: skip
    run_all.write_doc(meta, [], {"ttd": {"found": False, "message": "none", "rows": []}}, doc)
    text = doc.read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        f"## {run_all.LATEST} (generated)",
        "## Instrumentation overhead",
        "## Lab footprint (generated)",  # not run this time: kept as it was
        f"## {run_all.TTD} (generated)",
    ]
    assert "hand-written figures" in text and "stale" in text


def test_a_partial_run_keeps_the_other_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    earlier = {"benchmark": "overhead", "summary": [], "marker": "from the full run"}
    previous = {
        "when": "earlier", "quick": False, "seconds": 600.0, "machine": {"nproc": 2},
        "loadavg_start": [1, 1, 1], "loadavg_end": [1, 1, 1], "results": {"overhead": earlier},
    }  # fmt: skip
    out.write_text(json.dumps(previous))
    assert run_all.main(["--only", "ttd", "--no-doc", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["results"]["overhead"]["marker"] == "from the full run"
    assert "ttd" in saved["results"]
    assert saved["when"] == "earlier"  # the header still describes the full run...
    assert [r["only"] for r in saved["reruns"]] == [["ttd"]]  # ...and names the re-run


def test_span_cost_prints_its_four_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert span_cost.main(["--spans", "1000"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert len(lines) == 4
    assert all(float(line.split()[-1]) > 0 for line in lines)
