"""The exact commands that reproduce a sweep and each of its jobs, from Hydra's own records.

- the sweep: `multirun.yaml` -> `python run.py -m <hydra overrides> <task overrides>`, where the
  hydra overrides are those given on the command line (e.g. `hydra/launcher=...`) minus the
  `hydra.mode=MULTIRUN` that `-m` itself adds; sweeper params set in the config or an
  experiment overlay are not repeated, since the same overlay applies them again.
- one job: `.hydra/overrides.yaml` -> `python run.py <overrides>` (a single run, no `-m`).
- the baseline a sweep lacks: its own command plus `cache=none decoding=fixed steps=${gen_length}`
  (command-line overrides win over the sweep's axes, so every cell becomes the baseline; the sweep
  runs identical cells once and skips the rest as duplicates), written into the same sweep folder.
Each override is shell-quoted, so the commands can be pasted as they are.
"""
from __future__ import annotations

import shlex

ENTRY = "python run.py"
DEFAULT_CONFIG_NAME = "config"


BASELINE = ("cache=none", "decoding=fixed", "steps=${gen_length}")  # every cell becomes the baseline


def sweep_command(multirun: dict | None, extra: list[str] = ()) -> str | None:
    """`python run.py -m ...` for a multirun.yaml (as a dict), or None without one; `extra`
    overrides are appended (replacing the sweep's own overrides of the same keys)."""
    if not multirun:
        return None
    hydra_cfg = multirun.get("hydra") or {}
    overrides = hydra_cfg.get("overrides") or {}
    hydra_ovs = [o for o in overrides.get("hydra") or [] if o != "hydra.mode=MULTIRUN"]
    parts = [*_config_name(hydra_cfg), "-m", *hydra_ovs,
             *_replaced(overrides.get("task") or [], extra)]
    return " ".join([ENTRY, *(shlex.quote(str(p)) for p in parts)])


def job_command(overrides: list[str] | None, extra: list[str] = ()) -> str | None:
    """`python run.py <overrides>` for one job's override list, or None if unknown."""
    if overrides is None:
        return None
    return " ".join([ENTRY, *(shlex.quote(str(o)) for o in _replaced(overrides, extra))])


def _replaced(overrides, extra) -> list[str]:
    keys = {str(e).split("=", 1)[0] for e in extra}
    return [o for o in overrides if str(o).split("=", 1)[0] not in keys] + list(extra)


def _config_name(hydra_cfg: dict) -> list[str]:
    name = (hydra_cfg.get("job") or {}).get("config_name")
    return [f"--config-name={name}"] if name and name != DEFAULT_CONFIG_NAME else []
