"""A ``*_tiny`` experiment run for real, then the report: every figure the sweep supports is drawn,
the rest are skipped with a note, and the table's numbers are those of the results files."""
from __future__ import annotations

import json
import re

from analysis.report import build_report
from conftest import needs_fixtures, run_cli

pytestmark = needs_fixtures


def test_fig5_tiny_experiment_then_report(tmp_path):
    # the experiment's axes (6 thresholds, dual cache), on the fixture model to keep it short
    proc = run_cli(["-m", "+experiment=fig5_threshold_tiny", "model=fixture_llada_tiny", "logger=none",
                    "n_samples=2", "batch_size=2", "gen_length=16", "block_length=8", "num_threads=1",
                    "progress=false", f"sweeps_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = tmp_path / "fig5_threshold_tiny"
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(results) == 6 and all(r["status"] == "ok" for r in results)

    report = build_report([sweep])
    drawn = {f.name for f in report.figures if not f.skipped}
    skipped = {f.name for f in report.figures if f.skipped}
    assert {"threshold_sweep", "pareto", "latency_breakdown"} <= drawn
    assert {"block_size_sweep", "kv_similarity"} <= skipped  # one block length, no KV metric
    for f in report.figures:
        assert all(p.exists() and p.stat().st_size > 0 for p in f.paths)
    html = report.html.read_text()
    for src in re.findall(r'<img[^>]+src="([^"]+)"', html):
        assert (report.html.parent / src).stat().st_size > 0
    md = report.markdown.read_text()
    for r in results:  # every job's accuracy and throughput appear as the report prints them
        assert f"{r['metrics']['tokens_per_s']:.1f}" in md or f"{r['metrics']['tokens_per_s']:.2f}" in md
