"""Paper Table 1/2: accuracy, throughput and speed-up over the baseline, as Markdown and LaTeX.

One block of rows per (model, task, gen length). Rows are every configuration that finished in
that block, ordered baseline, +cache, +parallel, +cache +parallel, then fixed k > 1 (see
analysis.methods). Jobs that share a label (e.g. seeds) are averaged. Speed-up is the row's
tokens/s over the baseline's tokens/s in the same block (the baseline with the same block length
when there are several); "—" where the block has no baseline.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import methods
from .style import FigureResult

COLUMNS = ("Model", "Task", "Gen length", "Method", "Accuracy (%)", "Tokens/s", "Speed-up (×)",
           "NFE (forwards/sample)", "Jobs")
DIGITS = {"Accuracy (%)": 1, "Tokens/s": 1, "Speed-up (×)": 2, "NFE (forwards/sample)": 1}
NUMERIC = (*DIGITS, "Gen length", "Jobs")  # right-aligned


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers behind Table 1/2 (unrounded), one row per configuration, columns = COLUMNS."""
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    out = []
    for key, sub in methods.groups(ok):
        with_block = methods.varies(sub, "block_length")
        rows = []
        for _, r in sub.iterrows():
            rows.append({
                "label": methods.label(r, with_block=with_block), "role": methods.role(r),
                "block": methods.get(r, "block_length"), "sort": methods.sort_key(r),
                "acc": _num(r, "metrics.accuracy") * 100, "tps": _num(r, "metrics.tokens_per_s"),
                "nfe": _num(r, "metrics.nfe_mean"),
            })
        cfgs = (pd.DataFrame(rows).groupby("label", sort=False)
                .agg(role=("role", "first"), block=("block", "first"), sort=("sort", "first"),
                     acc=("acc", "mean"), tps=("tps", "mean"), nfe=("nfe", "mean"),
                     jobs=("acc", "size"))
                .reset_index().sort_values("sort"))
        baselines = cfgs[cfgs["role"] == "baseline"]
        for _, c in cfgs.iterrows():
            base = baselines[baselines["block"] == c["block"]]
            base = base if len(base) else baselines
            speedup = c["tps"] / base["tps"].iloc[0] if len(base) else float("nan")
            out.append(dict(zip(COLUMNS, (*key, c["label"], c["acc"], c["tps"], speedup,
                                         c["nfe"], int(c["jobs"])))))
    return pd.DataFrame(out, columns=list(COLUMNS))


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
    md.write_text(to_markdown(table))
    tex.write_text(to_latex(table))
    return FigureResult("speedup_table", paths=[md, tex])


def _num(row: pd.Series, key: str) -> float:
    value = methods.get(row, key)
    return float(value) if value is not None else float("nan")


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"),
                 ("#", "\\#"), ("$", "\\$"), ("×", "$\\times$"), ("—", "--"),
                 ("·", "$\\cdot$")):
        text = text.replace(a, b)
    return text
