"""A report from any sweep: `python -m analysis.report SWEEP_DIR [SWEEP_DIR...] [--out DIR]`.

Writes into DIR (default: SWEEP_DIR/report for the first sweep):
- figures/: every figure the data supports (PNG + PDF) and the Table 1/2 speed-up table
  (Markdown + LaTeX); figures the data cannot support are listed with the reason, not drawn;
- report.html: one page with no external assets (inline CSS; images are files beside it, by
  relative path, so the folder can be moved or zipped as a whole), and report.md with the same
  content: job counts, the speed-up table (with the command that adds a missing baseline), the
  figures, every finished job, the failed / missing / not-started jobs with their errors, the
  cells skipped as duplicates, the exact commands (the sweep's `python run.py -m ...` from
  multirun.yaml, each job's `python run.py ...` from .hydra/overrides.yaml) and the environment
  stamps;
- a W&B mirror of the figures when the sweep logged to W&B: one run per sweep in DIR/wandb/
  (see analysis.wandb_log), uploaded by `wandb sync DIR/wandb/offline-run-*`.
A path that is not a sweep folder is a one-line error on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import html
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import figures, methods, spread, tables, wandb_log
from .notes import sweep_notes
from .commands import BASELINE, job_command, sweep_command
from .load import NotASweepError, config_columns, load_sweeps, read_multirun
from .style import FigureResult

JOB_METRICS = {  # metric -> (header, scale, digits); timed ones are read through analysis.spread
    "accuracy": ("Accuracy (%)", 100, 1),
    "tokens_per_s": ("Tokens/s", 1, 1),
    "nfe_mean": ("NFE (forwards/sample)", 1, 1),
    "tokens_per_forward": ("Answer tokens/forward (to EOS)", 1, 2),
    "ms_per_forward": ("ms/forward", 1, 2),
    "latency_s": ("Latency median (s per sample, timed pass)", 1, 3),
}
JOBS_NOTE = ("Answer tokens/forward counts generated tokens up to the first EOS ÷ NFE, so it is "
             "below 1 for one-token-per-step decoding whenever answers end before gen_length; the "
             "threshold figure's tokens decoded per step counts every generated position "
             "(gen length ÷ NFE, EOS padding included), which is k for fixed decoding. Timed "
             "values with [q25–q75] are medians over the timing repeats with their "
             "interquartile range.")
_AXES_FIRST = ("model.name", "task.name", "gen_length", "cache.name", "decoding.name",
               "decoding.threshold", "decoding.factor", "block_length", "steps")
_NOT_AXES = ("overrides", "config_hash", "threshold", "factor")  # aliases: decoding.* is used


@dataclass
class Report:
    """Paths written by build_report, and what it found."""

    html: Path
    markdown: Path
    figures: list[FigureResult]
    problems: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def build_report(sweep_dirs, out_dir=None) -> Report:
    """Load the sweeps, draw every supported figure, write report.html and report.md.

    Raises NotASweepError when a path is not a sweep folder.
    """
    sweep_dirs = [Path(p) for p in sweep_dirs]
    df = load_sweeps(sweep_dirs)
    out = Path(out_dir) if out_dir else sweep_dirs[0] / "report"
    fig_dir = out / "figures"
    results = [tables.write_speedup_table(df, fig_dir)] + [_safely(f, df, fig_dir)
                                                            for f in figures.ALL]
    speedup = tables.speedup_table(df)
    notes = sweep_notes(df)
    notes += [f"{r.name}: skipped — {r.skipped}" for r in results if r.skipped]
    images = [img for r in results for img in r.images]
    out.mkdir(parents=True, exist_ok=True)
    notes += wandb_log.log_report(df, images, {"speedup_table": speedup}, out)
    page = _Page(df, sweep_dirs, out, results, speedup, notes)
    (out / "report.html").write_text(page.html())
    (out / "report.md").write_text(page.markdown())
    return Report(out / "report.html", out / "report.md", results, page.problems, notes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR")
    parser.add_argument("--out", default=None, help="output folder (default: SWEEP_DIR/report)")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.sweep_dirs, args.out)
    except NotASweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    drawn = sum(1 for r in report.figures if not r.skipped)
    print(f"report: {report.html} ({drawn} figures/tables written, "
          f"{len(report.figures) - drawn} skipped, {len(report.problems)} failed/missing jobs)")
    for note in report.notes:
        if note.startswith("W&B"):
            print(note)
    return 0


def _safely(func, df, fig_dir) -> FigureResult:
    """One broken figure must not cost the whole report; it becomes a note instead."""
    try:
        return func(df, fig_dir)
    except Exception as exc:
        return FigureResult.skip(func.__name__, f"error while drawing: {type(exc).__name__}: {exc}")


class _Page:
    """The report's content, rendered as HTML or Markdown (same sections, same numbers)."""

    def __init__(self, df, sweep_dirs, out, results, speedup, notes):
        self.df, self.out, self.results, self.notes = df, out, results, notes
        self.sweeps = [(p, read_multirun(p)) for p in sweep_dirs]
        self.speedup = (list(speedup.columns), tables.formatted(speedup))
        self.jobs = _jobs_table(df)
        self.problems = _problems(df)
        self.duplicates = _duplicates(df)
        self.missing_baselines = tables.missing_baselines(speedup) if len(speedup) else []
        self.envs = _envs(df)

    def sections(self):
        """[(title, [blocks])]; a block is ("p", text), ("table", (cols, rows)),
        ("img", (path, caption)), ("code", text) or ("list", [text])."""
        counts = self.df["status"].value_counts().to_dict() if len(self.df) else {}
        summary = [("p", f"{len(self.df)} job{'s' * (len(self.df) != 1)}: " + (", ".join(
            f"{n} {s}" for s, n in sorted(counts.items())) or "none found"))]
        summary += [("p", f"Sweep folder: {p.resolve()}") for p, _ in self.sweeps]
        if self.notes:
            summary.append(("list", self.notes))
        figs = [("img", img) for r in self.results if r.name != "speedup_table" for img in r.images]
        table_files = [p for r in self.results if r.name == "speedup_table" for p in r.paths]
        speed = [("table", self.speedup)] if self.speedup[1] else [("p", "No finished job.")]
        if self.speedup[1]:
            speed.append(("p", tables.SPEEDUP_NOTE))
        if self.missing_baselines:
            speed.append(("p", "No baseline, so no speed-up, for: "
                          + "; ".join(self.missing_baselines) + ". Add the baseline cells with:"))
            speed += [("code", c) for c in self._baseline_commands()]
        if table_files:
            speed.append(("p", "Files: " + ", ".join(self._rel(p) for p in table_files)))
        sweeps = [("code", c) for c in (sweep_command(m) for _, m in self.sweeps) if c]
        commands = ([("p", "The last `-m` command run into the sweep folder (Hydra's "
                           "multirun.yaml), then each job's own:")] + sweeps) if sweeps else []
        per_job = [(str(r.get("job_dir")), job_command(r.get("overrides")))
                   for _, r in self.df.iterrows() if r.get("job_dir") is not None]
        commands += [("table", (["Job", "Command"], [[j, c] for j, c in per_job if c]))]
        return [
            ("Summary", summary),
            ("Table 1/2: accuracy, throughput and speed-up over the baseline", speed),
            ("Figures", figs or [("p", "No figure could be drawn from this data.")]),
            ("Finished jobs", [("table", self.jobs), ("p", JOBS_NOTE)] if self.jobs[1]
             else [("p", "None.")]),
            ("Failed, missing and not-started jobs",
             [("table", _text_table(self.problems))] if len(self.problems) else [("p", "None.")]),
            *([("Skipped duplicates", [("table", _text_table(self.duplicates))])]
              if len(self.duplicates) else []),
            ("Commands", commands),
            ("Environment", [("table", _text_table(self.envs))] if len(self.envs)
             else [("p", "No environment stamp (no results.json read).")]),
        ]

    def html(self) -> str:
        title = "dllm-bench report: " + ", ".join(p.name for p, _ in self.sweeps)
        body = [f"<h1>{_e(title)}</h1>"]
        for head, blocks in self.sections():
            body.append(f"<h2>{_e(head)}</h2>")
            body += [self._html_block(kind, data) for kind, data in blocks]
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{_e(title)}</title>"
                f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")

    def markdown(self) -> str:
        lines = ["# dllm-bench report: " + ", ".join(p.name for p, _ in self.sweeps), ""]
        for head, blocks in self.sections():
            lines += [f"## {head}", ""]
            for kind, data in blocks:
                if kind == "p":
                    lines += [data, ""]
                elif kind == "list":
                    lines += [f"- {x}" for x in data] + [""]
                elif kind == "code":
                    lines += ["```", data, "```", ""]
                elif kind == "img":
                    path, caption = data
                    links = "".join(f" ([{name}]({self._rel(p)}))" for p, name in _siblings(path))
                    lines += [f"![{caption}]({self._rel(path)})", "", f"*{caption}*{links}", ""]
                elif kind == "table":
                    cols, rows = data
                    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
                              for r in rows] + [""]
        return "\n".join(lines)

    def _html_block(self, kind, data) -> str:
        if kind == "p":
            return f"<p>{_e(data)}</p>"
        if kind == "list":
            return "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in data) + "</ul>"
        if kind == "code":
            return f"<pre>{_e(data)}</pre>"
        if kind == "img":
            path, caption = data
            links = [f"<a href='{_e(self._rel(p))}'>{name}</a>" for p, name in _siblings(path)]
            link = f" ({', '.join(links)})" if links else ""
            return (f"<figure><img src='{_e(self._rel(path))}' alt='{_e(caption)}'>"
                    f"<figcaption>{_e(caption)}{link}</figcaption></figure>")
        cols, rows = data
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def _baseline_commands(self) -> list[str]:
        """Per sweep: its own command plus the baseline overrides (see analysis.commands)."""
        out = []
        for path, multirun in self.sweeps:
            cmd = sweep_command(multirun, list(BASELINE))
            if cmd is None:  # a single run: its job's overrides
                jobs = self.df[(self.df["sweep_dir"] == str(path.resolve()))
                               & self.df["overrides"].notna()]
                cmd = job_command(jobs["overrides"].iloc[0], list(BASELINE)) if len(jobs) else None
            if cmd:
                out.append(cmd)
        return out

    def _rel(self, path) -> str:
        return Path(path).resolve().relative_to(self.out.resolve()).as_posix()


def _siblings(path) -> list[tuple[Path, str]]:
    """Files beside a figure that the report links: its PDF; a replay's animation and page."""
    kinds = ((".pdf", "PDF"), (".gif", "animation"), (".html", "step-by-step page"))
    return [(Path(path).with_suffix(ext), name) for ext, name in kinds if Path(path).with_suffix(ext).is_file()]


def _jobs_table(df: pd.DataFrame):
    ok = df[df["status"] == "ok"]
    axes = [c for c in config_columns(ok) if c not in _NOT_AXES and methods.varies(ok, c)]
    axes = [c for c in _AXES_FIRST if c in axes] + sorted(c for c in axes if c not in _AXES_FIRST)
    values = {m: spread.value(ok, m) if m in spread.TIMED else _num(ok, f"metrics.{m}")
              for m in JOB_METRICS}
    metrics = [m for m, v in values.items() if v.notna().any()]
    cols = ["Sweep", "Job", *axes, *(JOB_METRICS[m][0] for m in metrics)]
    quart = {m: spread.quartiles(ok, m) for m in metrics}  # NaN unless timed with repeats
    rows = []
    for i, (_, r) in enumerate(ok.iterrows()):
        cells = [str(r["sweep"]), str(r["job_dir"])]
        cells += [_cell(methods.get(r, c, "—")) for c in axes]
        for m in metrics:
            _, scale, digits = JOB_METRICS[m]
            text = tables.fmt(values[m].iloc[i] * scale, digits)
            q25, q75 = (q.iloc[i] for q in quart[m])
            if pd.notna(q25) and pd.notna(q75):
                text += f" [{q25 * scale:.{digits}f}–{q75 * scale:.{digits}f}]"
            cells.append(text)
        rows.append(cells)
    return cols, rows


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(float("nan"), index=df.index)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def _cell(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _problems(df: pd.DataFrame) -> pd.DataFrame:
    bad = df[~df["status"].isin(["ok", "duplicate"])]
    return pd.DataFrame({
        "Sweep": bad["sweep"].astype(str), "Job": bad["job_dir"].fillna("—").astype(str),
        "Status": bad["status"].astype(str), "Error": bad["error"].fillna("").astype(str),
        "Command": [job_command(o) or "" for o in bad["overrides"]],
    })


def _duplicates(df: pd.DataFrame) -> pd.DataFrame:
    dup = df[df["status"] == "duplicate"]
    return pd.DataFrame({"Sweep": dup["sweep"].astype(str), "Job": dup["job_dir"].astype(str),
                         "Same config as job": dup["duplicate_of"].astype(str)})


def _envs(df: pd.DataFrame) -> pd.DataFrame:
    env_cols = sorted(c for c in df.columns if c.startswith("env."))
    if not env_cols:
        return pd.DataFrame()
    stamped = df.dropna(subset=env_cols, how="all")[env_cols]
    stamped = stamped.astype(object).where(stamped.notna(), "—").astype(str)
    counts = stamped.value_counts(sort=False, dropna=False).reset_index(name="jobs")
    return counts.rename(columns={c: c.removeprefix("env.") for c in env_cols})


def _text_table(frame: pd.DataFrame):
    return list(map(str, frame.columns)), [[str(v) for v in row]
                                          for row in frame.itertuples(index=False)]


def _e(text) -> str:
    return html.escape(str(text), quote=True)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;
padding:3px 7px}th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}
figure{margin:1.5em 0}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
figcaption{font-size:13px;color:#444}"""

if __name__ == "__main__":
    sys.exit(main())
