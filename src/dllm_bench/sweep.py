"""A launch of ``run.py`` as a whole: checks before the first job, a summary and exit status after
the last (the Hydra callback ``hydra.callbacks.sweep`` of conf/config.yaml).

Before a multirun launches anything, every cell is composed with Hydra's own sweeper logic (the
basic sweeper's cartesian product of the command line and ``hydra.sweeper.params``) and checked
as its job will check it before loading a model (``config.validate`` + ``job.prepare``), so a bad
value in the last cell stops the launch before the first cell runs: one ``error: cell i/n
(...)`` line per distinct error, naming the first cell that has it, exit status 1. ``dry_run=true`` (``run.py --dry-run``) lists the
cells, each with what the launch would do (run, skip, or the error), and runs none.

After the jobs: a table of the cells (status, headline metrics), where the results are and the
report command; the process exits 1 when a cell failed or left no result, with one line per such
cell (its traceback is in the job's run.log). Outcomes are read back from the sweep folder, so
this holds for launchers whose jobs run in other processes or on other machines (submitit, Slurm).
"""
from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .claims import CLAIMS
from .config import RUN_ONLY_KEYS, ConfigError, validate
from .results import RESULTS, SWEEP_TABLE, config_hash, find_done, load_job, utc_now

HEADLINE = {"accuracy": "{:.3f}", "tokens_per_s": "{:.1f}", "nfe_mean": "{:.1f}", "latency_s_median": "{:.3f}"}
LOCAL_LAUNCHERS = ("BasicLauncher", "LocalLauncher")  # run their jobs on this machine
FAILED = ("failed", "missing")  # outcomes that make the launch exit non-zero


@dataclass
class Cell:
    label: str                      # what sets this cell apart, e.g. "cache=dual threshold=0.7"
    job_dir: Path
    cfg: DictConfig | None = None   # the job's config (no hydra node); None when it did not compose
    chash: str | None = None
    plan: str = "run"               # run | skip | invalid
    note: str = ""                  # skip: where the result is; invalid: the one-line error


def _project_root(config: DictConfig) -> Path:
    """run.py's folder: the parent of the primary config folder (relative model paths start there)."""
    for src in config.hydra.runtime.config_sources:
        if src.provider == "main" and src.schema == "file":
            return Path(src.path).parent
    return Path.cwd()


def _job_config(full: DictConfig) -> DictConfig:
    """The config a job receives: the composed one without its hydra node (as Hydra's run_job does)."""
    cfg = copy.deepcopy(full)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _job_dir(full: DictConfig, multirun: bool) -> Path:
    hc = HydraConfig.instance()
    previous = hc.cfg
    hc.set_config(full)
    try:
        if multirun:
            return Path(str(full.hydra.sweep.dir)) / str(full.hydra.sweep.subdir)
        return Path(str(full.hydra.run.dir))
    finally:
        hc.cfg = previous


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text if isinstance(e, ConfigError) else f"{type(e).__name__}: {text}"


def _show(path: Path) -> str:
    """A path relative to the working directory when it is under it."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def sweep_overrides(config: DictConfig) -> list[list[str]] | None:
    """Every cell's overrides, in launch order, as Hydra's basic sweeper makes them (None for
    another sweeper)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    args = params + list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return [cell for batch in BasicSweeper.split_arguments(parser.parse_overrides(args), None) for cell in batch]


def check_cell(cell: Cell, root: Path, memo: dict, local: bool) -> None:
    """Set ``cell.plan`` / ``cell.note``: what its job would do, checked as the job checks before
    loading the model (``local=False``: the device is on another machine, not checked here)."""
    from .job import prepare

    try:
        validate(cell.cfg, check_device=local)
        cell.chash = config_hash(OmegaConf.to_container(cell.cfg, resolve=True), RUN_ONLY_KEYS)
        done = None if cell.cfg.force else find_done(cell.job_dir.parent, cell.chash, cell.job_dir, warn=False)
        if done is not None:
            cell.plan, cell.note = "skip", f"already ok in {_show(cell.job_dir.parent / done[0])}"
        else:
            prepare(cell.cfg, root, memo)
    except Exception as e:  # every problem of every cell, one line each
        cell.plan, cell.note = "invalid", _one_line(e)


def outcome(cell: Cell, since: str) -> tuple[str, dict | None, Path]:
    """(status, results, folder) of a cell after a launch that began at ``since``: ok / failed
    (finished in this launch), skipped (an ok result from before), busy (another launcher holds
    it), missing (nothing was written: the job died or was never run)."""
    res, problem = load_job(cell.job_dir, full=False)
    if res is not None and problem is None and res.get("config_hash") == cell.chash \
            and str(res.get("finished_at")) >= since:
        return res["status"], res, cell.job_dir
    done = find_done(cell.job_dir.parent, cell.chash, warn=False) if cell.chash else None
    if done is not None:
        return "skipped", done[1], cell.job_dir.parent / done[0]
    if cell.chash and (cell.job_dir.parent / CLAIMS / f"{cell.chash}.json").exists():
        return "busy", None, cell.job_dir
    return "missing", None, cell.job_dir


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def summary(cells: list[Cell], since: str) -> tuple[list[str], list[str]]:
    """(summary lines for stdout, one error line per failed / missing cell)."""
    found = [(cell, *outcome(cell, since)) for cell in cells]
    rows = [["cell", "status", *HEADLINE]]
    errors = []
    for cell, status, res, folder in found:
        m = (res or {}).get("metrics") or {}
        rows.append([cell.label, status, *(fmt.format(m[k]) if isinstance(m.get(k), (int, float)) else "-"
                                                  for k, fmt in HEADLINE.items())])
        if status == "failed":
            errors.append(f"error: cell {cell.label} failed: {res.get('error')} "
                          f"(traceback in {_show(folder / 'run.log')})")
        elif status == "missing":
            errors.append(f"error: cell {cell.label} left no result in {_show(folder)} "
                          f"(see its run.log, if any); run the same command again to retry it")
    counts = {s: sum(f[1] == s for f in found) for s in ("ok", "skipped", "failed", "busy", "missing")}
    sweeps = sorted({cell.job_dir.parent for cell in cells})
    head = f"== {len(cells)} cell{'s' * (len(cells) != 1)}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [head + " ==", *_table(rows)]
    for sweep in sweeps:
        lines.append(f"results: {_show(sweep)}/<cell>/{RESULTS}, table {_show(sweep / SWEEP_TABLE)}")
        lines.append(f"report:  python -m analysis.report {_show(sweep)}")
        if any(f[3].parent == sweep and f[1] in ("ok", "failed") and list(f[3].glob("wandb/offline-run-*"))
               for f in found):
            lines.append(f"W&B:     offline runs; upload with: wandb sync {_show(sweep)}/*/wandb/offline-run-*")
    return lines, errors


class SweepCallback(Callback):
    """See the module doc. ``dry_run``: list the cells and what would happen to each, run none."""

    def __init__(self, dry_run: bool = False):
        self.dry_run = dry_run
        self.cells: list[Cell] | None = None
        self.since = ""

    def _check(self, config: DictConfig, cells: list[Cell]) -> None:
        root, memo = _project_root(config), {}
        launcher = str(config.hydra.launcher.get("_target_", ""))
        local = launcher.rsplit(".", 1)[-1] in LOCAL_LAUNCHERS
        for cell in cells:
            if cell.plan == "run":
                check_cell(cell, root, memo, local)

    def _listing(self, cells: list[Cell]) -> None:
        n = len(cells)
        print(f"dry run: {n} cell{'s' * (n != 1)}, nothing is run")
        for i, cell in enumerate(cells, 1):
            what = {"run": f"-> {_show(cell.job_dir)}", "skip": cell.note, "invalid": cell.note}[cell.plan]
            print(f"{i:>4}/{n}  {cell.plan:<7}  {cell.label}  {what}")

    def _refuse(self, cells: list[Cell]) -> None:
        """One line per distinct error, naming its first cell (and how many more share it)."""
        by_error: dict[str, list[tuple[int, Cell]]] = {}
        for i, cell in enumerate(cells, 1):
            if cell.plan == "invalid":
                by_error.setdefault(cell.note, []).append((i, cell))
        for note, [(i, cell), *more] in by_error.items():
            also = f" and {len(more)} more cell{'s' * (len(more) != 1)}" if more else ""
            print(f"error: cell {i}/{len(cells)} ({cell.label}){also}: {note}", file=sys.stderr)
        if by_error:
            raise SystemExit(1)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.since = utc_now()
        overrides = sweep_overrides(config)
        if overrides is None:
            print(f"note: {config.hydra.sweeper._target_} is not Hydra's basic sweeper: cells are checked by "
                  f"their jobs only", file=sys.stderr)
            return
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
        varying = [i for i in range(len(overrides[0]))
                   if len({tuple(o)[i] for o in overrides}) > 1] if overrides else []
        cells = []
        for ov in overrides:
            label = " ".join(ov[i] for i in varying) or " ".join(ov) or "(defaults)"
            try:
                full = loader.load_sweep_config(config, list(ov))
                cells.append(Cell(label, _job_dir(full, multirun=True), _job_config(full)))
            except Exception as e:  # a composition error of this cell (e.g. an unknown option)
                cells.append(Cell(label, Path(str(config.hydra.sweep.dir)) / "?", plan="invalid", note=_one_line(e)))
        self._check(config, cells)
        if self.dry_run:
            self._listing(cells)
            raise SystemExit(1 if any(c.plan == "invalid" for c in cells) else 0)
        self._refuse(cells)
        plans = {p: sum(c.plan == p for c in cells) for p in ("run", "skip")}
        print(f"[check] {len(cells)} cells valid: {plans['run']} to run, {plans['skip']} already ok")
        self.cells = cells

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._report()

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.since = utc_now()
        job_dir = _job_dir(config, multirun=False)
        cell = Cell(job_dir.name, job_dir, _job_config(config))
        self._check(config, [cell])  # before Hydra makes the job folder
        if self.dry_run:
            self._listing([cell])
            raise SystemExit(1 if cell.plan == "invalid" else 0)
        if cell.plan == "invalid":
            raise SystemExit(f"error: {cell.note}")
        self.cells = [cell]

    def on_run_end(self, config: DictConfig, job_return=None, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        if job_return is None or job_return.status == JobStatus.COMPLETED:  # else Hydra reports the error
            self._report()

    def _report(self) -> None:
        if not self.cells:
            return
        lines, errors = summary(self.cells, self.since)
        print("\n".join(lines), flush=True)
        if errors:
            print("\n".join(errors), file=sys.stderr, flush=True)
            raise SystemExit(1)
