"""Sweep folders -> one tidy pandas DataFrame (one row per job).

Promise: reads only what docs/results_schema.md puts on disk (`results.json`, `.hydra/`,
`sweep.csv`, `multirun.yaml`) and never imports the engine (`dllm_bench`), so a sweep that ran
on a cluster can be analysed on a laptop that has pandas, PyYAML and matplotlib.

Columns of the frame:
- the resolved config, flattened with dots: `model.name`, `cache.name`, `decoding.name`,
  `decoding.threshold`, `task.name`, `gen_length`, `block_length`, `steps`, ... A config key that
  would shadow a namespace below (e.g. the `metrics.kv_similarity` switch) is kept as
  `config.<key>` (here `config.metrics.kv_similarity`), so `metrics.*` always means a measurement;
- every metric as `metrics.<name>` and the environment stamp as `env.<name>`;
- `status`: "ok" / "failed" (from results.json), "duplicate" (a job folder without results.json
  whose `skipped.json` says the sweep skipped it: its config equals that of the ok job named by
  `duplicate_of`, which holds the numbers), "missing" (a job folder without results.json: running,
  killed or stopped before writing), "not_started" (a combination that the sweep's multirun.yaml
  asks for but no job folder holds);
- `error`, `sweep`, `sweep_dir`, `job_dir` (relative to the sweep folder, as in sweep.csv),
  `job_path`, `config_hash`, `overrides` (the job's Hydra overrides, a list), `kv_similarity`
  (the raw block of results.json or None), `started_at`, `finished_at`, `schema_version`.
"""
from __future__ import annotations

import itertools
import json
import numbers
import os
import re
from pathlib import Path

import pandas as pd
import yaml

META_COLUMNS = (
    "sweep", "job_dir", "status", "error", "config_hash", "schema_version", "started_at",
    "finished_at", "sweep_dir", "job_path", "overrides", "kv_similarity", "duplicate_of",
)
NAMESPACES = ("metrics.", "env.", "config.")
MISSING_REASON = "no results.json: still running, killed, or stopped before writing results"
_SKIP_DIRS = {"wandb", "__pycache__"}  # and hidden folders (.hydra, .submitit)
_MAX_DEPTH = 3  # job folders are "<sweep>/<n>" or at most a couple of levels below


class NotASweepError(ValueError):
    """The path holds no job folders, no sweep.csv and no multirun.yaml."""


def load_sweep(path: str | os.PathLike) -> pd.DataFrame:
    """Read one sweep folder into a DataFrame with one row per job (see the module docstring).

    Raises NotASweepError (one line, naming the path) if `path` is not a sweep folder.
    A folder that is a sweep but has no finished job yields rows with status "missing" /
    "not_started" (or an empty frame with the columns above when even those are unknown).
    """
    sweep_dir = Path(path).resolve()
    if not sweep_dir.is_dir():
        raise NotASweepError(f"{path}: no such directory")
    job_paths = find_job_dirs(sweep_dir)
    csv_path, multirun_path = sweep_dir / "sweep.csv", sweep_dir / "multirun.yaml"
    if not job_paths and not csv_path.is_file() and not multirun_path.is_file():
        raise NotASweepError(
            f"{path}: not a sweep folder (no job folders with results.json or .hydra/, "
            "no sweep.csv, no multirun.yaml)"
        )
    rows = [_read_job(p, sweep_dir) for p in job_paths]
    rows += _csv_only_rows(csv_path, {r["job_dir"] for r in rows}, sweep_dir)
    rows += _not_started_rows(multirun_path, rows, sweep_dir)
    df = merge_shards(pd.DataFrame(rows))
    for col in META_COLUMNS:
        if col not in df.columns:
            df[col] = None
    df["sweep"] = df["sweep"].fillna(sweep_dir.name)
    return _numeric(df[_ordered(df.columns)])


def load_sweeps(paths) -> pd.DataFrame:
    """Concatenate load_sweep() over several sweep folders (columns are unioned)."""
    frames = [load_sweep(p) for p in paths]
    if not frames:
        raise NotASweepError("no sweep folder given")
    df = pd.concat(frames, ignore_index=True, sort=False)
    return _numeric(df[_ordered(df.columns)])


# totals over a cell's samples (a sharded cell's value is the sum of its shards'); plugin counters
# (`stat_*`) too
SUMMED = ("n_samples", "generated_tokens", "accuracy_pass_s", "timed_samples", "load_s", "layer_tokens_computed",
          "layer_tokens_total", "agreement_n", "agreement_extra_forwards", "agreement_extra_s")


def merge_shards(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: the jobs of a cell run in shards (config `shard` = "i/n", the same overrides
    otherwise, or the same config where overrides are unknown) become one row, where the first shard stood. With every shard ok, its metrics are
    those of the whole cell: sums (``SUMMED``: sample and token counts, pass times, layer x token
    work, the agreement pass's samples and cost, plugin counters ``stat_*``), maxima (peak and KV-cache bytes), tokens_per_forward recomputed from the sums, and every
    other metric (speed medians and quartiles of each shard's own timed pass included) averaged
    weighted by n_samples; `job_dir` joins the shards' folders with " + ", and
    `config_hash` is None. A cell missing a shard, or with a failed one, is one row with status
    "failed" / "missing", no metrics and an error naming the shards. Rows without `shard` pass as is.
    """
    if "shard" not in df.columns or df["shard"].isna().all():
        return df
    keys = [c for c in df.columns if c != "shard" and c not in META_COLUMNS and not c.startswith(NAMESPACES[:2])]

    def cell(row) -> str:  # the job's overrides but shard= (also for a job without results.json), else its config
        if isinstance(row["overrides"], list):
            return json.dumps(sorted(str(o) for o in row["overrides"] if not str(o).startswith("shard=")))
        return json.dumps([None if (isinstance(v, float) and pd.isna(v)) else v for v in row[keys]], default=str)

    groups: dict[str, list[int]] = {}
    for i, row in df.iterrows():
        if isinstance(row["shard"], str):
            groups.setdefault(cell(row), []).append(i)
    out, done = [], set()
    for i, row in df.iterrows():
        if i in done:
            continue
        if not isinstance(row["shard"], str):
            out.append(row.to_dict())
            continue
        part = df.loc[groups[cell(row)]]
        done.update(part.index)
        merged = row.drop([c for c in df.columns if c.startswith("metrics.")]).to_dict()
        merged.update(shard=None, config_hash=None, job_dir=" + ".join(map(str, part["job_dir"])), job_path=None,
                      overrides=[o for o in (row["overrides"] if isinstance(row["overrides"], list) else [])
                                 if not str(o).startswith("shard=")] or None,
                      started_at=part["started_at"].min(), finished_at=part["finished_at"].max())
        n = int(row["shard"].split("/")[1])
        ok = part[part["status"] == "ok"]
        have = sorted(int(str(s).split("/")[0]) for s in ok["shard"])
        if have != list(range(n)):
            missing = [f"{i}/{n}" for i in range(n) if i not in have]
            merged.update(status="failed" if (part["status"] == "failed").any() else "missing",
                          error=f"shards not done: {', '.join(missing)} ({'; '.join(part['error'].dropna().astype(str))})")
            out.append(merged)
            continue
        m = {c: pd.to_numeric(ok[c], errors="coerce") for c in ok.columns if c.startswith("metrics.")}
        size = m["metrics.n_samples"]
        for c, v in m.items():
            merged[c] = float((v * size).sum() / size.sum()) if v.notna().all() else None
        for c in m:
            if c.removeprefix("metrics.") in SUMMED or c.startswith("metrics.stat_"):
                merged[c] = m[c].sum()
        for c in ("peak_memory_bytes", "kv_cache_bytes"):
            if f"metrics.{c}" in m:
                merged[f"metrics.{c}"] = m[f"metrics.{c}"].max()
        merged["metrics.tokens_per_forward"] = m["metrics.generated_tokens"].sum() / (m["metrics.nfe_mean"] * size).sum()
        if merged.get("metrics.layer_tokens_total"):
            merged["metrics.compute_skipped"] = 1 - merged["metrics.layer_tokens_computed"] / merged["metrics.layer_tokens_total"]
        out.append(merged)
    return pd.DataFrame(out)


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders under `sweep_dir`: folders holding results.json or .hydra/, in job order.

    A folder that is itself a job (a single `python run.py` output) is returned alone.
    """
    if _is_job_dir(sweep_dir):
        return [sweep_dir]
    found = []
    for root, dirs, _ in os.walk(sweep_dir):
        here = Path(root)
        depth = len(here.relative_to(sweep_dir).parts)
        if here != sweep_dir and _is_job_dir(here):
            found.append(here)
            dirs[:] = []  # a job folder's subfolders (wandb/, .hydra/) are not jobs
            continue
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")
                   and depth < _MAX_DEPTH]
    return sorted(found, key=lambda p: _natural_key(str(p.relative_to(sweep_dir))))


def config_columns(df: pd.DataFrame) -> list[str]:
    """The flattened config columns of a frame from load_sweep (everything but metrics/meta)."""
    return [c for c in df.columns if c not in META_COLUMNS and not c.startswith(NAMESPACES[:2])]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The `metrics.<name>` columns of a frame from load_sweep."""
    return [c for c in df.columns if c.startswith("metrics.")]


def flatten(tree, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become JSON strings so every cell is hashable."""
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def read_overrides(job_path: Path) -> list[str] | None:
    """The job's `.hydra/overrides.yaml` (a list of "key=value"), or None if absent."""
    f = Path(job_path) / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return None
    data = yaml.safe_load(f.read_text()) or []
    return [str(x) for x in data]


def read_multirun(sweep_dir: Path) -> dict | None:
    """The sweep's multirun.yaml as a plain dict (interpolations left as text), or None."""
    f = Path(sweep_dir) / "multirun.yaml"
    if not f.is_file():
        return None
    try:
        return yaml.safe_load(f.read_text()) or {}
    except yaml.YAMLError:
        return None


def expected_overrides(multirun: dict) -> list[list[str]] | None:
    """Every job a basic-sweeper multirun asks for, as override lists; None if unknowable.

    The sweep is the cartesian product of `hydra.sweeper.params` then the command-line task
    overrides (a later key replaces an earlier one). Needs hydra-core for the override grammar
    (range(), choice(), quoting); without it, or for other sweepers (optuna, ...), returns None.
    """
    hydra_cfg = (multirun or {}).get("hydra") or {}
    sweeper = hydra_cfg.get("sweeper") or {}
    if not str(sweeper.get("_target_", "BasicSweeper")).endswith("BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = list(((hydra_cfg.get("overrides") or {}).get("task")) or [])
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(params + task)
        choices: dict[str, list[str]] = {}
        for ov in parsed:
            key = ov.get_key_element()
            if ov.is_sweep_override():
                if not ov.is_discrete_sweep():
                    return None
                choices[key] = [f"{key}={v}" for v in ov.sweep_string_iterator()]
            else:
                choices[key] = [f"{key}={ov.get_value_element_as_str()}"]
    except Exception:  # hydra missing or an override it cannot parse without the config tree
        return None
    return [list(c) for c in itertools.product(*choices.values())]


def _is_job_dir(path: Path) -> bool:
    return (path / "results.json").is_file() or (path / ".hydra").is_dir() or (path / "skipped.json").is_file()


def _read_job(job_path: Path, sweep_dir: Path) -> dict:
    rel = job_path.relative_to(sweep_dir).as_posix()
    row = {"job_dir": rel, "job_path": str(job_path), "sweep_dir": str(sweep_dir),
           "overrides": read_overrides(job_path)}
    results_file = job_path / "results.json"
    if not results_file.is_file():
        hydra_cfg = job_path / ".hydra" / "config.yaml"
        if hydra_cfg.is_file():  # Hydra's composed config: which job it was
            composed = yaml.safe_load(hydra_cfg.read_text()) or {}
            resolved = _resolve(composed)
            row.update(_config_columns(composed if resolved is None else resolved))
        skipped = job_path / "skipped.json"  # written by the job when the sweep already held its config
        if skipped.is_file():
            try:
                holder = json.loads(skipped.read_text())["duplicate_of"]
            except (OSError, ValueError, KeyError, TypeError):
                holder = None
            if holder:
                row.update(status="duplicate", duplicate_of=holder,
                           error=f"skipped: same config as job {holder}, which holds the results")
                return row
        row.update(status="missing", error=MISSING_REASON)
        return row
    try:
        res = json.loads(results_file.read_text())
        if not isinstance(res, dict) or not all(isinstance(res.get(k) or {}, dict)
                                                for k in ("config", "metrics", "env")):
            raise ValueError("not a results object (docs/results_schema.md)")
    except (OSError, ValueError) as exc:
        row.update(status="failed", error=f"results.json unreadable: {exc}")
        return row
    row.update(_config_columns(res.get("config") or {}))
    row.update(flatten(res.get("metrics") or {}, "metrics."))
    row.update(flatten(res.get("env") or {}, "env."))
    row.update(
        status=res.get("status", "ok"), error=res.get("error"), sweep=res.get("sweep"),
        config_hash=res.get("config_hash"), schema_version=res.get("schema_version"),
        started_at=res.get("started_at"), finished_at=res.get("finished_at"),
        kv_similarity=res.get("kv_similarity") or None,
    )
    return row


def _resolve(composed: dict) -> dict | None:
    """A composed `.hydra/config.yaml` with its `${...}` interpolations resolved, as the job saw
    it; None when it cannot be resolved here (no omegaconf, or a resolver only Hydra knows)."""
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.create(composed), resolve=True)
    except Exception:
        return None


def _config_columns(config: dict) -> dict:
    flat = flatten(config)
    return {(f"config.{k}" if _shadows(k) else k): v for k, v in flat.items()}


def _shadows(key: str) -> bool:
    return key in META_COLUMNS or key.startswith(NAMESPACES)


def _csv_only_rows(csv_path: Path, seen: set, sweep_dir: Path) -> list[dict]:
    """Rows of sweep.csv whose job folder is not on disk (e.g. only the table was copied)."""
    if not csv_path.is_file():
        return []
    try:
        table = pd.read_csv(csv_path, dtype={"job_dir": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return []
    rows = []
    for rec in table.to_dict("records"):
        if str(rec.get("job_dir")) in seen:
            continue
        rec = {k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in rec.items()}
        rec.update(sweep_dir=str(sweep_dir), job_path=None, overrides=None, kv_similarity=None)
        rec.setdefault("status", "ok")
        rows.append(rec)
    return rows


def _not_started_rows(multirun_path: Path, rows: list[dict], sweep_dir: Path) -> list[dict]:
    multirun = read_multirun(multirun_path.parent) if multirun_path.is_file() else None
    expected = expected_overrides(multirun) if multirun else None
    if not expected or len(expected) <= len(rows):
        return []
    seen = {frozenset(r["overrides"]) for r in rows if r.get("overrides")}
    return [
        {"status": "not_started", "error": "no job folder yet", "overrides": combo,
         "sweep_dir": str(sweep_dir), "job_dir": None, "job_path": None}
        for combo in expected if frozenset(combo) not in seen
    ]


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding only numbers and None (e.g. `decoding.threshold`, null for fixed
    decoding) become float columns, so they sort, compare and plot as numbers."""
    for col in df.columns:
        if df[col].dtype != object:
            continue
        values = df[col].dropna()
        if len(values) and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                               for v in values):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def _natural_key(text: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


def _ordered(columns) -> list[str]:
    cols = list(columns)
    head = [c for c in ("sweep", "job_dir", "status") if c in cols]
    config = [c for c in cols if c not in META_COLUMNS and not c.startswith(NAMESPACES[:2])]
    metrics = sorted(c for c in cols if c.startswith("metrics."))
    env = sorted(c for c in cols if c.startswith("env."))
    tail = [c for c in META_COLUMNS if c in cols and c not in head]
    return head + sorted(config) + metrics + env + tail
