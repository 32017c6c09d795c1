"""Loggers that mirror a finished job's local results (the ``logger`` config group).

The job always writes results.json / samples.jsonl first; a logger only mirrors them. ``WandbLogger``
makes one W&B run per job: group = sweep name, config = the resolved config, summary = the
namespaced metrics (``W&B_KEYS``), a ``samples`` table, the decoding replays as media (when the
job made them), tags for model / cache / decoding, and its files under ``<job_dir>/wandb``. It runs
offline unless the user is logged in or sets ``WANDB_MODE``. Anything W&B cannot do becomes a
warning: local results never depend on it. W&B's own console output is off unless ``quiet=false``
(run.py's summary says where offline runs are and how to sync them).

Online mode costs one short connection attempt per process: before the first online run, a TCP
connection to W&B's server (or the HTTPS proxy) must open within ``connect_timeout_s``; if it does
not, or if an online ``wandb.init`` fails, one warning says so and every run of this process is
written offline instead (to be uploaded later with ``wandb sync``), rather than each job waiting
for W&B's own ~90 s timeout.
"""
from __future__ import annotations

import os
import socket
import threading
import warnings
from pathlib import Path
from urllib.parse import urlparse

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


# W&B endpoint (host, port) -> None when it answered, else why not: each is tried once per process
_OFFLINE_BECAUSE: dict[tuple[str, int], str | None] = {}


def _endpoint(base_url: str) -> tuple[str, int]:
    """Where an online run connects first: the HTTPS proxy if one is set, else W&B's server."""
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(k)), None)
    url = urlparse(proxy if proxy and "://" in proxy else f"http://{proxy}" if proxy else base_url)
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def _unreachable(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout_s`` (name lookup
    included: it runs in a thread, since ``getaddrinfo`` has no timeout), else why not."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


def _go_offline(endpoint: tuple[str, int], why: str) -> None:
    if _OFFLINE_BECAUSE.get(endpoint) is None:
        warnings.warn(f"W&B is set to online but {endpoint[0]}:{endpoint[1]} cannot be used ({why}); "
                      f"this process logs its W&B runs offline from now on (upload them later with "
                      f"`wandb sync <job>/wandb/offline-run-*`)",
                      RuntimeWarning, stacklevel=3)
    _OFFLINE_BECAUSE[endpoint] = why


class WandbLogger:
    """``logger=wandb``: one W&B run per job, mirroring results.json (see module doc).
    ``connect_timeout_s``: how long the one connection attempt of online mode may take."""

    def __init__(self, project: str = "dllm-bench", entity: str | None = None, mode: str | None = None,
                 tags: list[str] | None = None, log_samples: bool = True, connect_timeout_s: float = 5.0,
                 quiet: bool = True):
        if not (type(connect_timeout_s) in (int, float) and 0 < connect_timeout_s < float("inf")):
            raise ValueError(f"connect_timeout_s must be a finite number > 0, got {connect_timeout_s!r}")
        self.project, self.entity, self.tags, self.log_samples = project, entity, list(tags or []), log_samples
        self.quiet = quiet
        self.mode = mode or os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")
        self.connect_timeout_s = connect_timeout_s

    def _mode_now(self, base_url: str) -> str:
        """``self.mode``, except offline once this process has found W&B's server unreachable."""
        if self.mode != "online":
            return self.mode
        endpoint = _endpoint(base_url)
        if endpoint not in _OFFLINE_BECAUSE:
            _OFFLINE_BECAUSE[endpoint] = None
            why = _unreachable(*endpoint, self.connect_timeout_s)
            if why is not None:
                _go_offline(endpoint, why)
        return "online" if _OFFLINE_BECAUSE[endpoint] is None else "offline"

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
        base_url = os.environ.get("WANDB_BASE_URL") or wandb.setup().settings.base_url
        mode = self._mode_now(base_url)
        init = dict(project=self.project, entity=self.entity, dir=str(job_dir), group=results["sweep"],
                    name=f"{results['sweep']}/{job_dir.name}", job_type=cfg["task"]["name"], config=cfg, tags=tags)
        quiet = dict(silent=True) if self.quiet else {}  # W&B's own ~17 lines per run bury the job's result line
        if mode == "online":
            try:
                run = wandb.init(mode="online", settings=wandb.Settings(init_timeout=30, **quiet), **init)
            except Exception as e:  # reachable but refused (key, proxy, server): offline from now on
                _go_offline(_endpoint(base_url), f"wandb.init failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
                run = wandb.init(mode="offline", settings=wandb.Settings(**quiet), **init)
        else:
            run = wandb.init(mode=mode, settings=wandb.Settings(**quiet), **init)
        try:
            summary = {wandb_key(k): v for k, v in results["metrics"].items() if v is not None}
            summary.update(status=results["status"], error=results["error"], config_hash=results["config_hash"])
            run.summary.update(summary)
            if self.log_samples and samples:
                cols = list(samples[0])
                rows = [[s.get(c) if isinstance(s.get(c), (int, float, bool, type(None))) else str(s.get(c))
                         for c in cols] for s in samples]
                run.log({"samples": wandb.Table(columns=cols, data=rows)})
            if media := replay_media(wandb, results, job_dir):
                run.log(media)
        finally:
            run.finish()


def replay_media(wandb, results: dict, job_dir: Path) -> dict:
    """The job's decoding replays (results.json ``replays``) as W&B media: per sample the step x
    position picture (Image), the animation (Video, GIF) and the slider page (Html)."""
    media = {}
    for entry in (results.get("replays") or {}).get("samples", []):
        files, key = entry.get("files", {}), f"replays/sample-{entry['index']}"
        caption = f"sample {entry['id']}: {entry['nfe']} forwards"
        if (job_dir / files.get("png", "-")).is_file():
            media[f"{key}/steps"] = wandb.Image(str(job_dir / files["png"]), caption=caption)
        if (job_dir / files.get("gif", "-")).is_file():
            media[f"{key}/animation"] = wandb.Video(str(job_dir / files["gif"]), caption=caption)
        if (job_dir / files.get("html", "-")).is_file():
            media[f"{key}/page"] = wandb.Html((job_dir / files["html"]).read_text())
    return media
