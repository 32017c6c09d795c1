"""Analysis of dllm-bench sweeps: result folders -> DataFrame -> tables, figures, report.

Reads only the files described in docs/results_schema.md and never imports the engine
(`dllm_bench`), so figures can be redrawn anywhere pandas and matplotlib are installed. Installed
with the project (`pip install -e .`), so `python -m analysis.report` runs from any directory.

    from analysis import load_sweep, figures, build_report
    df = load_sweep("sweeps/fig5_threshold_tiny")
    figures.threshold_sweep(df, "out/")          # -> FigureResult(paths=[...]) or .skipped
    build_report(["sweeps/fig5_threshold_tiny"])  # same as: python -m analysis.report SWEEP_DIR
"""
from . import figures, spread, tables
from .load import NotASweepError, config_columns, load_sweep, load_sweeps, metric_columns
from .style import FigureResult
from .tables import speedup_table, write_speedup_table

__all__ = [
    "FigureResult", "NotASweepError", "build_report", "config_columns", "figures",
    "load_sweep", "load_sweeps", "metric_columns", "speedup_table", "spread", "tables",
    "write_speedup_table",
]


def __getattr__(name):
    # Imported on first use so `python -m analysis.report` does not find analysis.report already
    # in sys.modules (runpy warns about that).
    if name == "build_report":
        from .report import build_report

        return build_report
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
