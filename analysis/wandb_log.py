"""Mirror a report's figures and tables to W&B for the sweeps that logged to W&B.

A sweep used W&B when any of its jobs has config `logger.name == "wandb"` or a logger whose
`_target_` class names W&B (conf/logger/wandb.yaml is `_target_: ...WandbLogger`, with no name).
For each such sweep one run (job_type "analysis", group = the sweep name, name
"<sweep>-report") is written into the report folder, `<report>/wandb/offline-run-*`, offline
unless WANDB_MODE says otherwise. With the default report folder (`sweeps/<name>/report`) the
README's `wandb sync sweeps/<name>/*/wandb/offline-run-*` uploads it with the jobs' runs; the
report's note gives the exact command either way. wandb is imported lazily, and nothing here ever
raises: a failure becomes a warning and a note for the report.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd


def sweeps_using_wandb(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """[(sweep_dir, sweep name, project)] for sweeps whose jobs ran with logger=wandb."""
    target_class = _text(df, "logger._target_").str.rsplit(".", n=1).str[-1].str.lower()
    used = df[(_text(df, "logger.name") == "wandb") | target_class.str.contains("wandb")]
    out = []
    for sweep_dir, sub in used.groupby("sweep_dir", sort=True):
        project = sub["logger.project"].dropna() if "logger.project" in sub else pd.Series()
        out.append((sweep_dir, str(sub["sweep"].iloc[0]),
                    str(project.iloc[0]) if len(project) else "dllm-bench"))
    return out


def log_report(df: pd.DataFrame, images: list[tuple[Path, str]], tables: dict,
               out_dir) -> list[str]:
    """Log PNGs (with captions) and tables ({name: DataFrame}) to one run per W&B sweep, its files
    in `out_dir`/wandb; returns notes for the report."""
    targets = sweeps_using_wandb(df)
    if not targets:
        return []
    notes = []
    try:
        import wandb
    except Exception as exc:  # not installed or broken install
        return [_warn(f"W&B logging skipped: cannot import wandb ({exc})")]
    mode = os.environ.get("WANDB_MODE", "offline")
    for sweep_dir, sweep, project in targets:
        try:
            run = wandb.init(project=project, group=sweep, job_type="analysis",
                             name=f"{sweep}-report", dir=str(out_dir), mode=mode,
                             config={"sweep_dir": sweep_dir})
            where = Path(run.dir).parent  # <out_dir>/wandb/<mode>-run-<time>-<id>
            try:
                run.log({f"figures/{Path(png).stem}": wandb.Image(str(png), caption=caption)
                         for png, caption in images})
                run.log({f"tables/{name}": wandb.Table(dataframe=t.astype(str))
                         for name, t in tables.items() if not t.empty})
            finally:
                run.finish()
            notes.append(f"W&B: logged {len(images)} figures of {sweep} to a {mode} run in "
                         f"{where}" + (f" (upload: wandb sync {where})" if mode == "offline"
                                       else ""))
        except Exception as exc:  # W&B must never fail the report
            notes.append(_warn(f"W&B logging failed for {sweep_dir}: {type(exc).__name__}: {exc}"))
    return notes


def _text(df: pd.DataFrame, col: str) -> pd.Series:
    return df[col].astype(str) if col in df.columns else pd.Series("", index=df.index)


def _warn(message: str) -> str:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return message
