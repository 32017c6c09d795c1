"""Typed schemas of a sweep cell (one job) and the checks that run before any model loads.

The Hydra app (``run.py``) composes ``conf/config.yaml`` on top of ``RunConfig``: one group per
ablation axis (model, cache, decoding, task, logger). Typed nodes fail at composition on a
misspelled key or a wrong type; the cache and decoding nodes are the plugins' own arguments, checked
by building the plugins (``decoding.registry.from_spec``: unknown arguments, ranges, finite
numbers). ``validate``
raises one ``ValueError`` naming every bad value, before anything expensive happens.

Importing this module registers the schemas in Hydra's ConfigStore and the ``dllm_job_dir``
resolver used by ``conf/config.yaml`` for job folder names.
"""
from __future__ import annotations

import difflib
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

FAMILIES = ("llada", "dream")


@dataclass
class ModelConf:
    name: str = MISSING
    path: str = MISSING  # checkpoint folder (relative to the project root) or hub id
    family: str = MISSING  # llada | dream
    instruct: bool = False           # apply the tokenizer's chat template to chat-able samples
    tokenizer: Optional[Any] = None  # a `_target_` node building one; null: the checkpoint's own


@dataclass
class MeasureConf:
    kv_similarity: bool = False      # paper Fig. 3: K/V cosine similarity across steps (slow)
    kv_similarity_samples: int = 2   # samples measured (batch size 1, after the timed run)
    kv_heatmap_prompt_tokens: int = 64  # heatmap keeps the prompt's last N tokens (memory bound)
    agreement: bool = False          # token / answer agreement with one-token-per-step decoding (extra decode)
    agreement_samples: Optional[int] = None  # samples compared (null: all of the cell's)
    replays: int = 0                 # step-by-step replays (PNG, GIF, HTML) of the first N samples


@dataclass
class TimingConf:
    repeats: int = 3                 # timed repeats of the subset (after warmup), median and quartiles
    samples: Optional[int] = None    # prompts in the timed subset (null: one batch, batch_size of them)
    warmup: int = 1                  # untimed repeats first
    max_spread: float = 0.25         # flag the timing as noisy when IQR / median of the repeats exceeds it
    baseline: bool = False           # also time cache=none + fixed (1 token/step), interleaved: speedup


@dataclass
class RunConfig:
    """The schema of a sweep cell: types here, values in conf/config.yaml (their one source)."""

    model: ModelConf = field(default_factory=ModelConf)
    cache: Any = MISSING  # `name` (+ `_target_`) + the cache policy's own arguments
    decoding: Any = MISSING  # `name` (+ `_target_`) + the decoding rule's own arguments
    task: Any = MISSING  # `_target_` + name + the task's own keyword arguments
    logger: Any = MISSING  # `_target_` + the logger's keyword arguments
    measure: MeasureConf = field(default_factory=MeasureConf)
    timing: TimingConf = field(default_factory=TimingConf)
    gen_length: int = MISSING
    block_length: Optional[int] = MISSING  # null: one block (Dream + cache=none: Dream's own schedule)
    steps: Optional[int] = MISSING  # fixed decoding's total step budget
    threshold: float = MISSING  # alias read by decoding=threshold (-> decoding.threshold)
    factor: float = MISSING  # alias read by decoding=factor (-> decoding.factor)
    cfg_scale: float = MISSING  # classifier-free guidance (the prompt masked in the unconditional pass)
    batch_size: int = MISSING
    n_samples: Optional[int] = MISSING  # null: the task's whole evaluation set
    seed: int = MISSING
    device: str = MISSING
    dtype: str = MISSING
    stop_at_eos: bool = MISSING
    graphs: bool = MISSING  # static-shape steps, CUDA graphs on a GPU (same tokens as eager)
    fused: bool = MISSING  # torch.compile-fused RMSNorm / RoPE / SwiGLU (models/ops.py)
    protocol: str = MISSING  # prompt encoding + output post-processing: clean | reference (tasks/protocol.py)
    shard: Optional[str] = MISSING  # "i/n": this job runs the i-th of n parts of the cell's samples
    num_threads: Optional[int] = MISSING  # torch threads; null: cpu_count // n_parallel
    n_parallel: int = MISSING  # jobs running at once on this machine (submitit_local: all)
    force: bool = MISSING  # rerun even when the sweep folder holds an ok result
    progress: bool = MISSING  # tqdm bar per job
    sweep_name: str = MISSING
    sweeps_dir: str = MISSING  # Keys that change how a job runs or is reported but not what it measures; the top-level
# threshold / factor are aliases whose effective value lives in `decoding`.
RUN_ONLY_KEYS = ("logger", "num_threads", "n_parallel", "force", "progress", "sweep_name", "sweeps_dir",
                 "threshold", "factor")


class ConfigError(ValueError):
    """A bad sweep configuration, found before anything is loaded or written."""


def register_configs() -> None:
    """Store the root schema as ``config_schema`` (the first entry of conf/config.yaml's defaults)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=RunConfig)


def job_dirname(override_dirname: str) -> str:
    """A job folder name from Hydra's ``override_dirname``: readable, filesystem-safe, bounded."""
    if not override_dirname:
        return "default"
    name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", override_dirname)
    if len(name) > 120:
        name = name[:100] + "-" + hashlib.sha256(override_dirname.encode()).hexdigest()[:12]
    return name


if not OmegaConf.has_resolver("dllm_job_dir"):
    OmegaConf.register_new_resolver("dllm_job_dir", job_dirname)
register_configs()


def _choice(kind: str, value, valid) -> str | None:
    if value in valid:
        return None
    near = difflib.get_close_matches(str(value), list(valid), n=1)
    return f"unknown {kind} {value!r} (valid: {', '.join(valid)})" + (f"; did you mean {near[0]}?" if near else "")


def _plugin_options(args: list[str], group: str, conf_dir: Path | None) -> list[str] | None:
    """The plugin names a command line selects for ``group`` (cache / decoding): its ``group=a,b``
    choices, else the root config's default; None when an experiment overlay may change it."""
    for arg in args:
        if arg.startswith(f"{group}="):
            return [v.strip() for v in arg.split("=", 1)[1].split(",")]
    if conf_dir is None or any(a.startswith("+experiment=") for a in args):
        return None
    import yaml

    defaults = yaml.safe_load((Path(conf_dir) / "config.yaml").read_text()).get("defaults", [])
    return [d[group] for d in defaults if isinstance(d, dict) and group in d]


def _added_root_key(arg: str, groups, conf_dir: Path | None) -> None:
    """``+key=...`` / ``++key=...``: the root key (or group) must exist (``+cahce=none`` would add an
    unused key and run the default cache)."""
    from dataclasses import fields

    head = arg.lstrip("+").split("=", 1)[0].split("@")[0].split("/")[0].split(".")[0]
    if head.startswith("hydra"):
        return
    folders = sorted(p.name for p in Path(conf_dir).iterdir() if p.is_dir() and p.name != "hydra") \
        if conf_dir else list(groups)
    valid = [f.name for f in fields(RunConfig)] + [g for g in folders if g not in {f.name for f in fields(RunConfig)}]
    if head not in valid:
        near = difflib.get_close_matches(head, valid, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ConfigError(f"unknown key {head!r} added with '+' in {arg!r}: the root config has no such key or "
                          f"group (valid: {', '.join(valid)}){hint}")


def check_override_keys(args: list[str], conf_dir: str | Path | None = None) -> None:
    """Raise ``ConfigError`` for a command-line override of a key that a typed node or the selected
    plugin lacks, or a root key added with ``+`` that is neither a root key nor a config group,
    listing the valid keys (Hydra's own message does not). Group choices (``cache=dul``) are left to
    Hydra, whose message lists the available options; untyped nodes (task, logger) to Hydra's
    struct check.
    """
    from dataclasses import fields

    from .decoding import CACHES, RULES

    nodes = {"model": ModelConf, "measure": MeasureConf, "timing": TimingConf}
    plugins = {"cache": CACHES, "decoding": RULES}
    groups = ("model", "cache", "decoding", "task", "logger", "experiment")
    for arg in args:
        if arg.startswith("+") and "=" in arg:
            _added_root_key(arg, groups, conf_dir)
        if arg.startswith(("-", "+", "~", "hydra")) or "=" not in arg:
            continue
        head, _, rest = arg.split("=", 1)[0].partition(".")
        if head == "metrics" and rest:
            raise ConfigError(f"unknown key 'metrics.{rest}': the settings of what a job measures are under "
                              f"'measure' (measure.{rest}); metrics.* names the measured results")
        if rest and head in plugins:
            reg = plugins[head]
            names = _plugin_options(args, head, conf_dir) or list(reg)
            valid = sorted({a for n in names if n in reg for a in ("name", *reg[n].arg_names())})
            key, where = rest.split(".")[0], f"{head} {'/'.join(names)}"
        elif not rest and head not in groups:
            valid, key, where = [f.name for f in fields(RunConfig)], head, "the root config"
        elif rest and head in nodes:
            valid, key, where = [f.name for f in fields(nodes[head])], rest.split(".")[0], head
        else:
            continue
        if valid and key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConfigError(f"unknown key {key!r} in {where} (valid: {', '.join(valid)}){hint}")


def build_plugins(cfg):
    """(cache, rule) built from the config's ``cache`` and ``decoding`` nodes (ValueError if bad)."""
    return build_plugins_one(cfg, "cache"), build_plugins_one(cfg, "decoding")


def build_plugins_one(cfg, node: str):
    """The cache (node="cache") or rule (node="decoding") of a config."""
    from .decoding import CACHES, RULES, from_spec

    return from_spec(CACHES if node == "cache" else RULES, OmegaConf.to_container(cfg[node], resolve=True))


def shard_range(total: int, shard: str | None) -> tuple[int, int]:
    """[lo, hi) of the samples that ``shard="i/n"`` runs out of ``total`` (all of them for None):
    the i-th of n contiguous parts, sizes differing by at most one."""
    if shard is None:
        return 0, total
    i, n = parse_shard(shard)
    return total * i // n, total * (i + 1) // n


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; a one-line ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m or not int(m[1]) < int(m[2]):
        raise ValueError(f"shard={shard!r} must be 'i/n' with 0 <= i < n (e.g. shard=0/4)")
    return int(m[1]), int(m[2])


def validate(cfg, check_device: bool = True) -> None:
    """Raise one ``ConfigError`` listing every invalid value of a composed config (no model needed).
    ``check_device=False`` skips whether this machine has the device (a launcher running the job
    on another machine)."""
    import torch

    from .decoding.generate import graphs_unsupported, pair_unsupported
    from .models.loading import _DTYPES
    from .tasks.protocol import PROTOCOLS

    bad: list[str] = []
    cache = rule = None
    for node in ("cache", "decoding"):
        try:
            built = build_plugins_one(cfg, node)
        except ValueError as e:
            bad.append(f"{node}: {e}")
        else:
            cache, rule = (built, rule) if node == "cache" else (cache, built)
    bad.append(_choice("model.family", cfg.model.family, FAMILIES))
    bad.append(_choice("dtype", cfg.dtype, tuple(_DTYPES)))
    g, b, s = cfg.gen_length, cfg.block_length, cfg.steps
    if g <= 0:
        bad.append(f"gen_length must be > 0, got {g}")
    if b is not None and (b <= 0 or (g > 0 and g % b)):
        bad.append(f"block_length={b} must be > 0 and divide gen_length={g}")
    n_blocks = g // b if b and g > 0 and g % b == 0 else 1
    if s is not None and (s <= 0 or s % n_blocks):
        bad.append(f"steps={s} must be > 0 and a multiple of the number of blocks ({n_blocks})")
    if s is None and rule is not None and rule.uses_steps:
        bad.append(f"steps is required with decoding={rule.name}")
    if not math.isfinite(cfg.cfg_scale) or cfg.cfg_scale < 0:
        bad.append(f"cfg_scale={cfg.cfg_scale} must be a finite number >= 0")
    if cache is not None and rule is not None and cfg.model.family in FAMILIES:
        bad.append(pair_unsupported(cache, rule, cfg.model.family))
    if cfg.graphs and cache is not None and rule is not None:
        bad.append((why := graphs_unsupported(cache, rule, cfg.cfg_scale)) and f"graphs=true {why}")
    for alias in ("threshold", "factor"):  # top-level aliases the rule does not read (else it reports them)
        if alias not in cfg.decoding and not math.isfinite(cfg[alias]):
            bad.append(f"{alias}={cfg[alias]} must be a finite number")
    m = cfg.measure
    least = 1 if m.kv_similarity else 0
    if m.kv_similarity_samples < least:
        bad.append(f"measure.kv_similarity_samples={m.kv_similarity_samples} must be >= {least}"
                   + (" with measure.kv_similarity=true" if least else ""))
    t = cfg.timing
    if t.repeats < 1 or t.warmup < 0 or (t.samples is not None and t.samples < 1):
        bad.append(f"timing.repeats={t.repeats} must be >= 1, timing.warmup={t.warmup} >= 0 and "
                   f"timing.samples={t.samples} >= 1 (or null)")
    if not math.isfinite(t.max_spread) or t.max_spread <= 0:
        bad.append(f"timing.max_spread={t.max_spread} must be a finite number > 0")
    if m.kv_heatmap_prompt_tokens < 0:
        bad.append(f"measure.kv_heatmap_prompt_tokens={m.kv_heatmap_prompt_tokens} must be >= 0")
    if m.agreement_samples is not None and m.agreement_samples < 1:
        bad.append(f"measure.agreement_samples={m.agreement_samples} must be >= 1 (or null for all)")
    if m.replays < 0:
        bad.append(f"measure.replays={m.replays} must be >= 0 (samples replayed)")
    if cfg.batch_size < 1:
        bad.append(f"batch_size={cfg.batch_size} must be >= 1")
    if cfg.n_samples is not None and cfg.n_samples < 1:
        bad.append(f"n_samples={cfg.n_samples} must be >= 1 (or null for all)")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        bad.append(f"num_threads={cfg.num_threads} must be >= 1")
    if cfg.n_parallel < 1:
        bad.append(f"n_parallel={cfg.n_parallel} must be >= 1")
    bad.append(_choice("protocol", cfg.protocol, PROTOCOLS))
    if cfg.shard is not None:
        try:
            _, n = parse_shard(cfg.shard)
            if cfg.n_samples is not None and n > cfg.n_samples:
                bad.append(f"shard={cfg.shard} splits n_samples={cfg.n_samples} into more parts than samples")
        except ValueError as e:
            bad.append(str(e))
    try:
        dev = torch.device(cfg.device)
        if check_device and dev.type == "cuda" and not torch.cuda.is_available():
            bad.append(f"device={cfg.device!r} but CUDA is not available")
    except RuntimeError:
        bad.append(f"device={cfg.device!r} is not a torch device")
    for key in ("_target_", "name"):
        if key not in cfg.task:
            bad.append(f"task config has no {key!r}")
    if "_target_" not in cfg.logger:
        bad.append("logger config has no '_target_'")
    bad = [m for m in bad if m]
    if bad:
        raise ConfigError("invalid config: " + "; ".join(bad))
