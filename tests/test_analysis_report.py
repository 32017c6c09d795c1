"""analysis.report end to end on synthetic sweeps: every supported figure drawn, the rest skipped
with a note, table numbers equal to the results files, images present, bad input handled, W&B
mirror optional and never fatal."""
import json
import re
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest

from analysis.report import build_report, main

try:
    from test_analysis_fakes import make_sweep
except ImportError:  # tests/ collected as a package
    from tests.test_analysis_fakes import make_sweep

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("pareto", "threshold_sweep", "block_size_sweep", "kv_similarity", "latency_breakdown")
OPT_IN = {"agreement", "replay_gallery"}  # only from jobs that measured them (tests/test_visualising.py)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Four sweeps that together support every figure, one failed and one missing job."""
    root = tmp_path_factory.mktemp("sweeps")
    sweeps = [
        make_sweep(root, "table", ["cache=none,prefix,dual", "decoding=fixed,threshold"],
                   failed={5}),
        make_sweep(root, "fig5", ["cache=none,dual", "threshold=0.7,0.8"], ["decoding=threshold"],
                   dirnames="overrides"),
        make_sweep(root, "fig5_fixed", ["cache=none,dual", "steps=32,16"], ["decoding=fixed"],
                   missing={3}),
        make_sweep(root, "fig4", ["cache=none,dual", "block_length=8,32"], ["decoding=threshold"],
                   kv_jobs={3}),
    ]
    report = build_report(sweeps, root / "report")
    return sweeps, report


def _ok_results(sweeps):
    out = []
    for s in sweeps:
        for f in sorted(s.glob("*/results.json")):
            res = json.loads(f.read_text())
            if res["status"] == "ok":
                out.append(res)
    return out


def _markdown_rows(text, header_start="| Model |"):
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return [c.strip() for c in lines[start].strip("|").split(" | ")], rows


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_every_supported_figure_is_drawn_as_png_and_pdf(full):
    _, report = full
    by_name = {r.name: r for r in report.figures}
    assert set(FIGURES) | OPT_IN | {"speedup_table"} == set(by_name)
    for name in FIGURES:
        result = by_name[name]
        assert result.skipped is None, (name, result.skipped)
        pngs = sorted(p for p in result.paths if p.suffix == ".png")
        assert pngs == sorted(p for p, _ in result.images)
        assert sorted(result.paths) == sorted(pngs + [p.with_suffix(".pdf") for p in pngs])
        assert all(p.is_file() and p.stat().st_size > 1000 for p in result.paths)
    assert [p.suffix for p in by_name["speedup_table"].paths] == [".md", ".tex"]
    assert "\\toprule" in by_name["speedup_table"].paths[1].read_text()


def test_table_numbers_equal_the_results_files(full):
    sweeps, report = full
    results = _ok_results(sweeps)
    cols, rows = _markdown_rows((report.html.parent / "figures" / "speedup_table.md").read_text())
    assert rows == _markdown_rows(report.markdown.read_text())[1]  # report shows the same table
    idx = {c: i for i, c in enumerate(cols)}

    def is_baseline(r):
        c = r["config"]
        return (c["cache"]["name"] == "none" and c["decoding"]["name"] == "fixed"
                and c["steps"] == c["gen_length"])

    table = {tuple(r[idx[c]] for c in ("Model", "Task", "Gen length", "Accuracy (%)", "Tokens/s",
                                       "Speed-up (×)", "NFE (forwards/sample)")) for r in rows}
    for res in results:
        c, m = res["config"], res["metrics"]
        bases = [b for b in results if is_baseline(b)
                 and b["config"]["block_length"] == c["block_length"]] or \
                [b for b in results if is_baseline(b)]
        speedup = m["tokens_per_s"] / bases[0]["metrics"]["tokens_per_s"]
        expected = (c["model"]["name"], c["task"]["name"], str(c["gen_length"]),
                    f"{m['accuracy'] * 100:.1f}", f"{m['tokens_per_s']:.1f}", f"{speedup:.2f}",
                    f"{m['nfe_mean']:.1f}")
        assert expected in table, expected
    assert len(rows) == len(results)  # no config twice in these sweeps, so one row per job
    baseline = [r for r in rows if r[idx["Method"]].startswith("baseline")]
    assert len(baseline) == 1 and baseline[0][idx["Speed-up (×)"]] == "1.00"


def test_html_is_self_contained_and_every_image_exists(full):
    _, report = full
    page = _Images()
    page.feed(report.html.read_text())
    pngs = [p for r in report.figures for p, _ in r.images]
    assert len(page.srcs) == len(pngs) >= len(FIGURES)
    for src in page.srcs:
        assert not re.match(r"^[a-z]+:", src) and not src.startswith("/")  # relative, no URL
        f = report.html.parent / src
        assert f.is_file() and f.stat().st_size > 0
    assert not {"script", "link"} & page.tags


def test_report_lists_failures_commands_and_environment(full):
    sweeps, report = full
    md, page = report.markdown.read_text(), report.html.read_text()
    failed = json.loads((sweeps[0] / "5" / "results.json").read_text())
    assert failed["error"] in md and failed["error"] in page
    assert set(report.problems["Status"]) == {"failed", "missing"}
    assert "python run.py -m cache=none,prefix,dual decoding=fixed,threshold" in md
    assert "python run.py decoding=fixed cache=dual steps=16" in md  # the missing job's command
    assert "python run.py decoding=threshold cache=dual threshold=0.8" in md  # one job's command
    env = failed["env"]
    assert env["torch"] in page and env["git_commit"] in page


def test_unsupported_figures_are_skipped_with_a_note(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual", "decoding=fixed,threshold"])
    report = build_report([sweep])
    assert report.html.parent == sweep / "report"
    skipped = {r.name: r.skipped for r in report.figures if r.skipped}
    assert set(skipped) == {"threshold_sweep", "block_size_sweep", "kv_similarity"} | OPT_IN
    md = report.markdown.read_text()
    for name, reason in skipped.items():
        assert f"{name}: skipped — {reason}" in md
        assert not list((sweep / "report" / "figures").glob(f"{name}*"))
    assert list((sweep / "report" / "figures").glob("pareto*.png"))


def test_empty_sweep_reports_what_is_missing(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual"], stop_after=0, csv=False)
    report = build_report([sweep])
    assert all(r.skipped for r in report.figures)
    assert list(report.problems["Status"]) == ["not_started", "not_started"]
    md = report.markdown.read_text()
    assert "python run.py cache=dual" in md and "2 jobs: 2 not_started" in md


def test_cli_runs_without_the_engine_and_rejects_non_sweeps(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual"], missing={1})
    blocked = ("import sys, runpy; sys.modules['dllm_bench'] = None; "  # any engine import fails
               "sys.argv = ['analysis.report', *sys.argv[1:]]; "
               "runpy.run_module('analysis.report', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", blocked, str(sweep), "--out", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r" / "report.html").is_file() and "1 failed/missing" in out.stdout
    not_sweep = tmp_path / "plain"
    not_sweep.mkdir()
    (not_sweep / "data.txt").write_text("x")
    assert main([str(not_sweep)]) == 2


def test_not_a_sweep_error_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(tmp_path / "nope") in err and "\n" not in err


def test_wandb_failure_warns_and_the_report_is_still_written(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path, "s", ["cache=dual"], ["logger=wandb"])  # one job: one figure
    broken = types.ModuleType("wandb")

    def init(**kwargs):
        raise RuntimeError("no W&B today")
    broken.init = init
    monkeypatch.setitem(sys.modules, "wandb", broken)
    with pytest.warns(RuntimeWarning, match="no W&B today"):
        report = build_report([sweep])
    assert "W&B logging failed" in report.markdown.read_text() and report.html.is_file()


def test_no_wandb_run_when_the_sweep_did_not_use_wandb(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path, "s", ["cache=dual"])  # NullLogger: its module is logging_wandb
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would raise
    report = build_report([sweep])
    assert not any("W&B" in n for n in report.notes) and not (sweep / "wandb").exists()


@pytest.mark.slow
def test_wandb_offline_run_lands_in_the_sweep_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = make_sweep(tmp_path, "s", ["cache=dual"], ["logger=wandb"])
    report = build_report([sweep])
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, report.notes
    logged = list(runs[0].rglob("media/images/**/*.png"))
    assert len(logged) == sum(len(r.images) for r in report.figures) > 0
