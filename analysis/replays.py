"""The decoding replays of a sweep's jobs (`measure.replays=N`, drawn by the job into
`<job>/replays/sample-<i>.{png,gif,html,json}`), gathered for the report.

`gallery` copies each finished job's replay files into `<out_dir>/replays/` as
`replay_<sweep>_<job>_sample-<i>.*` (so the report folder stays self-contained) and shows each sample's step x position picture, with its
animation (GIF) and step-slider page (HTML) beside it under the same name, which the report links.
It reads files only, never the engine.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from .style import FigureResult, slug

KINDS = ("png", "gif", "html")


def gallery(df: pd.DataFrame, out_dir) -> FigureResult:
    """One image per replayed sample of each finished job that has `replays/`."""
    result = FigureResult("replay_gallery")
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    for _, row in ok.iterrows():
        job = Path(str(row.get("job_path"))) if isinstance(row.get("job_path"), str) else None
        if job is None or not (job / "replays").is_dir():
            continue
        dest, prefix = Path(out_dir) / "replays", slug("replay", row.get("sweep"), row.get("job_dir"))
        for png in sorted((job / "replays").glob("sample-*.png"), key=lambda p: int(p.stem.split("-")[-1])):
            dest.mkdir(parents=True, exist_ok=True)
            copied = []
            for kind in KINDS:  # one name per job and sample: the W&B mirror keys figures by file stem
                src = png.with_suffix(f".{kind}")
                if src.is_file():
                    copied.append(Path(shutil.copy2(src, dest / f"{prefix}_{src.name}")))
            result.paths += copied
            result.images.append((copied[0], _caption(png.with_suffix(".json"), row)))
    if not result.paths:
        result.skipped = "no decoding replays (run with measure.replays=N)"
    return result


def _caption(record_file: Path, row) -> str:
    try:
        rec = json.loads(record_file.read_text())
        what = f"{rec['title']}, sample {rec['id']}: {rec['gen_length']} positions in {rec['nfe']} forwards"
    except (OSError, ValueError, KeyError):
        what = f"job {row.get('job_dir')}, {record_file.stem}"
    return (f"Decoding replay — {what}. Rows: forwards; colour: the forward that decoded each position; "
            f"grey: positions fed to the model (cache window); red x: re-masked")
