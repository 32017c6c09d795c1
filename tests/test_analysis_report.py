"""analysis.report end to end on synthetic sweeps: every supported figure drawn, the rest skipped
with a note, table numbers equal to the results files, images present, bad input handled, W&B
mirror optional and never fatal."""
import json
import os
import re
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest

from analysis import figures, methods, style, tables
from analysis.load import load_sweep
from analysis.report import build_report, main

try:
    from test_analysis_fakes import make_sweep
except ImportError:  # tests/ collected as a package
    from tests.test_analysis_fakes import make_sweep

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("pareto", "threshold_sweep", "block_size_sweep", "kv_similarity", "latency_breakdown")
OPT_IN = {"agreement", "replay_gallery", "methods_compare"}  # only from jobs that measured them, or sweeps of other methods


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
                                       "Speed-up (× baseline)", "NFE (forwards/sample)")) for r in rows}
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
    assert len(baseline) == 1 and baseline[0][idx["Speed-up (× baseline)"]] == "1.00"


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
    assert "python run.py -m logger=none cache=none,prefix,dual decoding=fixed,threshold" in md
    assert "python run.py logger=none decoding=fixed cache=dual steps=16" in md  # the missing job
    assert "python run.py logger=none decoding=threshold cache=dual threshold=0.8" in md
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
    assert "python run.py logger=none cache=dual" in md and "2 jobs: 2 not_started" in md


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
    assert not any("W&B" in n for n in report.notes)
    assert not list(sweep.rglob("wandb"))


@pytest.mark.slow
def test_wandb_offline_run_lands_in_the_report_folder_found_by_the_sync_command(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual"], ["logger=wandb"])  # 2 cells: figures
    report = build_report([sweep])
    runs = list((sweep / "report" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, report.notes
    # the README's upload command, `wandb sync sweeps/<name>/*/wandb/offline-run-*`, finds it
    assert list(sweep.glob("*/wandb/offline-run-*")) == runs
    assert f"wandb sync {runs[0]}" in report.markdown.read_text()
    logged = list(runs[0].rglob("media/images/**/*.png"))
    assert len(logged) == sum(len(r.images) for r in report.figures) > 0


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib Figures the figure functions save, by file stem (saved as usual too)."""
    figs = {}
    real_save = figures.save

    def save(fig, out_dir, stem):
        figs[stem] = fig
        return real_save(fig, out_dir, stem)
    monkeypatch.setattr(figures, "save", save)
    return figs


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_duplicates_are_listed_apart_from_failed_and_missing_jobs(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual", "threshold=0.7,0.9"], ["decoding=fixed"])
    report = build_report([sweep])
    assert report.problems.empty  # nothing failed or missing: two cells repeat another's config
    md = report.markdown.read_text()
    assert "4 jobs: 2 duplicate, 2 ok" in md and "2 cells were skipped as duplicates" in md
    _, rows = _markdown_rows(md, "| Sweep | Job | Same config as job |")
    assert rows == [["s", "1", "0"], ["s", "3", "2"]]


def test_speedup_says_which_baseline_it_needs_and_how_to_add_it(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["threshold=0.7,0.9"], ["cache=dual", "decoding=threshold"])
    report = build_report([sweep])
    md = report.markdown.read_text()
    cols, rows = _markdown_rows(md)
    assert {r[cols.index("Speed-up (× baseline)")] for r in rows} == {"—"}
    assert tables.SPEEDUP_NOTE in md and "cache=none, decoding=fixed" in tables.SPEEDUP_NOTE
    assert tables.SPEEDUP_NOTE in (sweep / "report" / "figures" / "speedup_table.md").read_text()
    assert ("No baseline, so no speed-up, for: llada_tiny_arith · arith · gen length 64" in md)
    assert ("python run.py -m logger=none threshold=0.7,0.9 cache=none decoding=fixed "
            "'steps=${gen_length}'") in md
    with_base = make_sweep(tmp_path, "b", ["cache=none,dual"], ["decoding=fixed"])
    assert "No baseline" not in build_report([with_base]).markdown.read_text()


def test_pareto_labels_every_point_and_its_legend_matches_the_markers(tmp_path, drawn):
    sweep = make_sweep(tmp_path, "s", ["cache=none,prefix,dual", "decoding=fixed,threshold"])
    build_report([sweep])
    (stem, fig), = [(s, f) for s, f in drawn.items() if s.startswith("pareto")]
    ax = fig.axes[0]
    df = load_sweep(sweep)
    labels = methods.point_labels(df)
    texts = _texts(ax)
    if set(labels) <= set(texts):  # each label beside its point
        assert sorted(t for t in texts if t in labels) == sorted(labels)
    else:  # crowded: a number beside each point and a key "n  label"
        key = texts[-1].splitlines()
        assert sorted(line.split(None, 1)[1] for line in key) == sorted(labels)
        assert sorted(texts[:-1], key=int) == [str(i) for i in range(1, len(labels) + 1)]
    kinds = {f"{r['cache.name']} cache, {r['decoding.name']}" for _, r in df.iterrows()}
    assert {t.get_text() for t in ax.get_legend().get_texts()} == kinds | {"Pareto front"}
    # each legend entry is the very artist that draws its points (an errorbar's data line)
    for handle, text in zip(*ax.get_legend_handles_labels()):
        if text != "Pareto front":
            cache, decoding = text.split(" cache, ")
            points = handle.lines[0]
            assert points.get_marker() == style.decoding_marker(decoding)
            assert points.get_color() == style.cache_color(cache)
            drawn_here = {(x, y) for x, y in zip(points.get_xdata(), points.get_ydata())}
            rows = df[(df["cache.name"] == cache) & (df["decoding.name"] == decoding)]
            assert drawn_here == {(r["metrics.tokens_per_s"], r["metrics.accuracy"] * 100)
                                  for _, r in rows.iterrows()}


def test_threshold_figure_compares_with_fixed_k_only_when_there_are_fixed_cells(tmp_path, drawn):
    plain = make_sweep(tmp_path, "plain", ["threshold=0.7,0.8,0.9"],
                       ["cache=dual", "decoding=threshold"])
    build_report([plain])
    assert len(drawn.pop(next(s for s in drawn if s.startswith("threshold")))
               .axes) == 2  # (a) accuracy and (b) tokens per step only
    drawn.clear()
    fig5 = make_sweep(tmp_path, "fig5", ["threshold=0.7,0.8,0.9",  # the default rule: +cell replaces it
                                         "+cell=swept,fixed_steps32,fixed_steps16"], ["cache=dual"])
    build_report([fig5])
    axes = drawn[next(s for s in drawn if s.startswith("threshold"))].axes
    assert [ax.get_title() for ax in axes] == ["(a) accuracy vs threshold",
                                               "(b) tokens per step vs threshold",
                                               "(c) threshold vs fixed k"]
    # tokens per step counts every generated position (gen length / NFE): k for fixed k
    res = [json.loads(p.read_text()) for p in fig5.glob("*/results.json")]
    curve = sorted((r["config"]["decoding"]["threshold"], 64 / r["metrics"]["nfe_mean"])
                   for r in res if r["config"]["decoding"]["name"] == "threshold")
    line = axes[1].get_lines()[0]
    assert list(line.get_xdata()) == [t for t, _ in curve]
    assert list(line.get_ydata()) == pytest.approx([v for _, v in curve])
    fixed_x = sorted(x for c in axes[2].collections for x, _ in c.get_offsets())
    assert fixed_x == [2.0, 4.0]
    assert {"k=2", "k=4", "0.7", "0.8", "0.9"} <= set(_texts(axes[2]))


def test_single_cell_sweep_skips_the_figures_that_compare_cells(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["cache=dual"])
    report = build_report([sweep])
    skipped = {r.name: r.skipped for r in report.figures if r.skipped}
    assert {"pareto", "latency_breakdown", "threshold_sweep", "block_size_sweep"} <= set(skipped)
    assert "at least 2 finished configurations" in skipped["pareto"]
    assert not list((sweep / "report" / "figures").glob("*.png"))
    md = report.markdown.read_text()
    assert "one finished cell" in md and "+cache +parallel (dual, threshold 0.9)" in md


def test_timing_spread_is_drawn_and_tabulated_when_recorded(tmp_path, drawn):
    axes = ["cache=none,dual", "decoding=fixed,threshold"]
    sweep = make_sweep(tmp_path, "spread", axes, spread=0.05, noisy={3})
    report = build_report([sweep])
    table = tables.speedup_table(load_sweep(sweep)).set_index("Method")
    res = {(r["config"]["cache"]["name"], r["config"]["decoding"]["name"]): r["metrics"]
           for r in _ok_results([sweep])}
    base = res[("none", "fixed")]
    assert table.loc["baseline", "Tokens/s"] == base["tokens_per_s_median"]  # the median
    assert table.loc["baseline", "Tokens/s IQR"] == (f"{base['tokens_per_s_q25']:.1f}–"
                                                     f"{base['tokens_per_s_q75']:.1f}")
    pareto = drawn[next(s for s in drawn if s.startswith("pareto"))].axes[0]
    assert all(c.has_xerr for c in pareto.containers)
    captions = [c for r in report.figures for _, c in r.images]
    assert sum("interquartile range" in c for c in captions) == 2  # pareto, latency breakdown
    md = report.markdown.read_text()
    assert f"{base['tokens_per_s_median']:.1f} [{base['tokens_per_s_q25']:.1f}–" in md
    assert "Noisy timing in job 3" in md and "Noisy timing in job 2" not in md

    drawn.clear()
    bare = build_report([make_sweep(tmp_path, "bare", axes)])
    assert "Tokens/s IQR" not in bare.markdown.read_text()
    pareto = drawn[next(s for s in drawn if s.startswith("pareto"))].axes[0]
    assert not any(c.has_xerr for c in pareto.containers)


def test_time_per_forward_that_depends_on_load_is_flagged(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["threshold=0.7,0.9"], ["cache=dual", "decoding=threshold"])
    assert "load-dependent" not in build_report([sweep]).markdown.read_text()
    f = sweep / "1" / "results.json"
    res = json.loads(f.read_text())
    res["metrics"]["ms_per_forward"] *= 10  # the same forward, ten times slower: a busy machine
    f.write_text(json.dumps(res))
    assert "Timing looks load-dependent" in build_report([sweep]).markdown.read_text()


@pytest.mark.slow
def test_report_runs_from_any_directory_once_installed(tmp_path):
    """`pip install .` puts analysis/ beside dllm_bench, so the module runs outside the checkout."""
    src = tmp_path / "src"
    for part in ("pyproject.toml", "README.md", "analysis", "src/dllm_bench"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        (src / part).parent.mkdir(parents=True, exist_ok=True)
        copy(ROOT / part, src / part, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / part).is_dir() else {}))
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(target), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "analysis.report", str(sweep)], cwd=elsewhere,
                         env={**env, "PYTHONPATH": str(target)}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (sweep / "report" / "report.html").is_file()
