"""Loggers that mirror a finished job's local results (the ``logger`` config group).

The job always writes results.json / samples.jsonl first; a logger only mirrors them. ``WandbLogger``
makes one W&B run per job: group = sweep name, config = the resolved config, summary = the
namespaced metrics (``W&B_KEYS``), a ``samples`` table, tags for model / cache / decoding, and its
files under ``<job_dir>/wandb``. It runs offline unless the user is logged in or sets ``WANDB_MODE``.
Anything W&B cannot do becomes a warning: local results never depend on it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

# results.json metric -> W&B summary key (namespaced so W&B groups the panels)
WANDB_KEYS = {
    "accuracy": "quality/accuracy",
    "tokens_per_s": "speed/tokens_per_s",
    "latency_s_mean": "speed/latency_s_mean",
    "latency_s_median": "speed/latency_s_median",
    "latency_s_p90": "speed/latency_s_p90",
    "ms_per_forward": "speed/ms_per_forward",
    "wall_s": "speed/wall_s",
    "nfe_mean": "cost/nfe_mean",
    "tokens_per_forward": "cost/tokens_per_forward",
    "cache_refreshes_mean": "cost/cache_refreshes_mean",
    "peak_memory_bytes": "memory/peak_memory_bytes",
    "kv_cache_bytes": "memory/kv_cache_bytes",
    "n_samples": "run/n_samples",
}


def wandb_key(metric: str) -> str:
    return WANDB_KEYS.get(metric, f"metrics/{metric}")


class NullLogger:
    """``logger=none``: local results only."""

    def log_job(self, results: dict, samples: list[dict], job_dir: str | Path) -> None:
        return None


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class WandbLogger:
    """``logger=wandb``: one W&B run per job, mirroring results.json (see module doc)."""

    def __init__(self, project: str = "dllm-bench", entity: str | None = None, mode: str | None = None,
                 tags: list[str] | None = None, log_samples: bool = True):
        self.project, self.entity, self.tags, self.log_samples = project, entity, list(tags or []), log_samples
        self.mode = mode or os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")

    def log_job(self, results: dict, samples: list[dict], job_dir: str | Path) -> None:
        try:
            self._log(results, samples, Path(job_dir))
        except Exception as e:  # W&B must never cost the local results
            msg = f"W&B logging failed for {job_dir} ({type(e).__name__}: {e}); local results are written"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

    def _log(self, results: dict, samples: list[dict], job_dir: Path) -> None:
        import wandb

        cfg = results["config"]
        tags = self.tags + [f"model:{cfg['model']['name']}", f"cache:{cfg['cache']['name']}",
                            f"decoding:{cfg['decoding']['name']}", f"status:{results['status']}"]
        run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(job_dir),
                         group=results["sweep"], name=f"{results['sweep']}/{job_dir.name}",
                         job_type=cfg["task"]["name"], config=cfg, tags=tags)
        try:
            summary = {wandb_key(k): v for k, v in results["metrics"].items() if v is not None}
            summary.update(status=results["status"], error=results["error"], config_hash=results["config_hash"])
            run.summary.update(summary)
            if self.log_samples and samples:
                cols = list(samples[0])
                rows = [[s.get(c) if isinstance(s.get(c), (int, float, bool, type(None))) else str(s.get(c))
                         for c in cols] for s in samples]
                run.log({"samples": wandb.Table(columns=cols, data=rows)})
        finally:
            run.finish()
