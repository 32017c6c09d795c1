"""Paper Table 1/2: accuracy, throughput and speed-up over the baseline, as Markdown and LaTeX.

One block of rows per (model, task, gen length). Rows are every configuration that finished in
that block, ordered baseline, +cache, +parallel, +cache +parallel, then fixed k > 1 (see
analysis.methods). Jobs that share a label (e.g. seeds) are averaged. Speed-up is the row's
tokens/s over the baseline's tokens/s in the same block (the baseline with the same block length
when there are several); "—" where the block has no baseline (SPEEDUP_NOTE says how to add it).
Tokens/s is the median over the timing repeats when a job recorded them (analysis.spread), and a
"Tokens/s IQR" column then gives their interquartile range.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import methods, spread
from .style import FigureResult

SPEEDUP = "Speed-up (× baseline)"
COLUMNS = ("Model", "Task", "Gen length", "Method", "Accuracy (%)", "Tokens/s", SPEEDUP,
           "NFE (forwards/sample)", "Jobs")
IQR = "Tokens/s IQR"
DIGITS = {"Accuracy (%)": 1, "Tokens/s": 1, SPEEDUP: 2, "NFE (forwards/sample)": 1}
NUMERIC = (*DIGITS, "Gen length", "Jobs", IQR)  # right-aligned
BASELINE = "cache=none, decoding=fixed, steps=gen_length: no cache, one token per step"
SPEEDUP_NOTE = (f"{SPEEDUP} = tokens/s ÷ tokens/s of the baseline ({BASELINE}) of the same "
                "model, task and gen length (and block length, when several); — where the sweep "
                "has no baseline: add it by running the sweep's command again with cache=none decoding=fixed 'steps=${gen_length}'.")


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers behind Table 1/2 (unrounded), one row per configuration, columns = COLUMNS."""
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    out = []
    for key, sub in methods.groups(ok):
        with_block = methods.varies(sub, "block_length")
        q25, q75 = spread.quartiles(sub, "tokens_per_s")
        rows = pd.DataFrame({
            "label": [methods.label(r, with_block=with_block) for _, r in sub.iterrows()],
            "role": [methods.role(r) for _, r in sub.iterrows()],
            "block": [methods.get(r, "block_length") for _, r in sub.iterrows()],
            "sort": [methods.sort_key(r) for _, r in sub.iterrows()],
            "acc": _col(sub, "metrics.accuracy") * 100, "tps": spread.value(sub, "tokens_per_s"),
            "q25": q25, "q75": q75, "nfe": _col(sub, "metrics.nfe_mean"),
        })
        cfgs = (rows.groupby("label", sort=False)
                .agg(role=("role", "first"), block=("block", "first"), sort=("sort", "first"),
                     acc=("acc", "mean"), tps=("tps", "mean"), nfe=("nfe", "mean"),
                     q25=("q25", "mean"), q75=("q75", "mean"), jobs=("acc", "size"))
                .reset_index().sort_values("sort"))
        baselines = cfgs[cfgs["role"] == "baseline"]
        for _, c in cfgs.iterrows():
            base = baselines[baselines["block"] == c["block"]]
            base = base if len(base) else baselines
            speedup = c["tps"] / base["tps"].iloc[0] if len(base) else float("nan")
            out.append({**dict(zip(COLUMNS, (*key, c["label"], c["acc"], c["tps"], speedup,
                                             c["nfe"], int(c["jobs"])))),
                        IQR: _iqr(c["q25"], c["q75"])})
    table = pd.DataFrame(out, columns=[*COLUMNS, IQR])
    if table[IQR].isna().all():
        return table.drop(columns=IQR)
    return table[[*COLUMNS[:6], IQR, *COLUMNS[6:]]]


def missing_baselines(table: pd.DataFrame) -> list[str]:
    """"model · task · gen length N" of every block of a speedup_table without a baseline."""
    blocks = table.groupby(["Model", "Task", "Gen length"], sort=False)[SPEEDUP]
    return [methods.group_title(k) for k, s in blocks if s.isna().all()]


def fmt(value, digits: int) -> str:
    """Number -> fixed-point text; NaN -> "—" (the same rule for Markdown, LaTeX and HTML)."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def formatted(table: pd.DataFrame) -> list[list[str]]:
    """Rows of text, numbers rounded per DIGITS."""
    return [[fmt(v, DIGITS.get(c, 0)) if not isinstance(v, str) else v
             for c, v in zip(table.columns, row)] for row in table.itertuples(index=False)]


def to_markdown(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---:" if c in NUMERIC else "---" for c in table.columns) + "|"
    body = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
            for row in formatted(table)]
    return "\n".join([head, rule, *body]) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}), a rule between (model, task, gen)."""
    align = "".join("r" if c in NUMERIC else "l" for c in table.columns)
    lines = [f"\\begin{{tabular}}{{{align}}}", "\\toprule",
             " & ".join(_tex(c) for c in table.columns) + " \\\\", "\\midrule"]
    previous = None
    for row in formatted(table):
        if previous is not None and row[:3] != previous:
            lines.append("\\midrule")
        previous = row[:3]
        lines.append(" & ".join(_tex(cell) for cell in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_speedup_table(df: pd.DataFrame, out_dir) -> FigureResult:
    """Write speedup_table.md and speedup_table.tex into out_dir (Table 1/2 of the paper)."""
    table = speedup_table(df)
    if table.empty:
        return FigureResult.skip("speedup_table", "no finished job to tabulate")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, tex = out_dir / "speedup_table.md", out_dir / "speedup_table.tex"
    md.write_text(to_markdown(table) + "\n" + SPEEDUP_NOTE + "\n")
    tex.write_text(to_latex(table))
    return FigureResult("speedup_table", paths=[md, tex])


def _col(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(float("nan"), index=df.index)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def _iqr(q25: float, q75: float):
    return None if pd.isna(q25) or pd.isna(q75) else f"{q25:.1f}–{q75:.1f}"


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"),
                 ("#", "\\#"), ("$", "\\$"), ("×", "$\\times$"), ("—", "--"), ("–", "--"),
                 ("·", "$\\cdot$")):
        text = text.replace(a, b)
    return text
