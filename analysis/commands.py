"""The exact commands that reproduce a sweep and each of its jobs, from Hydra's own records.

- the sweep: `multirun.yaml` -> `python run.py -m <hydra overrides> <task overrides>`, where the
  hydra overrides are those given on the command line (e.g. `hydra/launcher=...`) minus the
  `hydra.mode=MULTIRUN` that `-m` itself adds; sweeper params set in the config or an
  experiment overlay are not repeated, since the same overlay applies them again.
- one job: `.hydra/overrides.yaml` -> `python run.py <overrides>` (a single run, no `-m`).
Each override is shell-quoted, so the commands can be pasted as they are.
"""
from __future__ import annotations

import shlex

ENTRY = "python run.py"
DEFAULT_CONFIG_NAME = "config"


def sweep_command(multirun: dict | None) -> str | None:
    """`python run.py -m ...` for a multirun.yaml (as a dict), or None without one."""
    if not multirun:
        return None
    hydra_cfg = multirun.get("hydra") or {}
    overrides = hydra_cfg.get("overrides") or {}
    hydra_ovs = [o for o in overrides.get("hydra") or [] if o != "hydra.mode=MULTIRUN"]
    parts = [*_config_name(hydra_cfg), "-m", *hydra_ovs, *(overrides.get("task") or [])]
    return " ".join([ENTRY, *(shlex.quote(str(p)) for p in parts)])


def job_command(overrides: list[str] | None) -> str | None:
    """`python run.py <overrides>` for one job's override list, or None if unknown."""
    if overrides is None:
        return None
    return " ".join([ENTRY, *(shlex.quote(str(o)) for o in overrides)])


def _config_name(hydra_cfg: dict) -> list[str]:
    name = (hydra_cfg.get("job") or {}).get("config_name")
    return [f"--config-name={name}"] if name and name != DEFAULT_CONFIG_NAME else []
