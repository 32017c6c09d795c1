"""What a job reads and checks before it loads its model or writes a file (``prepare``): the
task's arguments, the model folder (for a hub id, its small files: config.json and the tokenizer)
and checkpoint, the tokenizer, this shard's samples and their encoded prompts, which with
``gen_length`` must fit the model's context (``max_sequence_length`` / ``max_position_embeddings``
of its config.json). Every problem is a one-line ``ConfigError``. ``run_job`` calls it for its
cell; ``dllm_bench.sweep`` for every cell of a multirun before the first job, sharing one memo.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from .config import ConfigError, shard_range
from .models import load_tokenizer
from .models.loading import _HUB_PATTERNS, check_checkpoint, read_config
from .tasks.protocol import EvalProtocol

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model_path(path: str, root: str | Path) -> str:
    """A local folder (absolute, or relative to the project root) or a hub id ``org/name``."""
    p = Path(path).expanduser()
    local = p if p.is_absolute() else Path(root) / p
    if local.is_dir():
        return str(local.resolve())
    if not p.is_absolute() and _HUB_ID.fullmatch(path):
        return path
    raise ConfigError(f"model folder not found: {local} (model.path={path!r})")


@dataclass
class Prepared:
    """What a job reads before loading its model (``prepare``): the task, its samples (this shard's)
    and their encoded prompts, the tokenizer, and where the model is."""
    task: Any
    model_path: str              # a local folder or a hub id
    tokenizer: Any
    protocol: EvalProtocol
    samples: list
    prompts: list[torch.Tensor]  # (P_i,) token ids per sample


def _memo(memo: dict | None, key, make):
    """``make()``, once per key of ``memo`` (its error too, so a sweep tries a bad task once)."""
    if memo is None:
        return make()
    if key not in memo:
        try:
            memo[key] = (make(), None)
        except Exception as e:
            memo[key] = (None, e)
    value, error = memo[key]
    if error is not None:
        raise error
    return value


def _yaml(node) -> str:
    return OmegaConf.to_yaml(node, resolve=True) if node is not None else ""


def model_files(model_path: str) -> Path:
    """The folder holding a model's config.json and tokenizer: a local folder as is; for a hub id,
    a snapshot of its small files (the weights come later, with ``load_model``). A hub model that
    cannot be fetched is a ``ConfigError``."""
    if Path(model_path).is_dir():
        return Path(model_path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_path, allow_patterns=[p for p in _HUB_PATTERNS if "safetensors" not in p]))
    except Exception as e:  # offline and not cached, unknown or gated repo, no network
        why = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"model {model_path!r} cannot be fetched from the Hugging Face hub ({type(e).__name__}: "
                          f"{why}); download it where there is network (or log in for a gated model) and set "
                          f"model.path to its folder") from None


def check_model(model_path: str) -> tuple[Path, Any]:
    """(folder of config.json and the tokenizer, the model's ModelConfig): a local checkpoint's
    config.json, weight files and shard index checked; a hub id's small files fetched and its
    config.json checked (its weights come with ``load_model``). A one-line ``ConfigError``."""
    folder = model_files(model_path)
    try:
        return folder, check_checkpoint(folder) if Path(model_path).is_dir() else read_config(folder)[1]
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None


def _check_context(cfg, task, samples, prompts, max_length: int) -> None:
    """Refuse a cell whose longest prompt + gen_length does not fit the model's positions."""
    i = max(range(len(prompts)), key=lambda j: len(prompts[j]))
    need = len(prompts[i]) + cfg.gen_length
    if need > max_length:
        raise ConfigError(
            f"task {task.name!r} does not fit model {cfg.model.name!r}: its longest prompt ({samples[i].id}) is "
            f"{len(prompts[i])} tokens, + gen_length={cfg.gen_length} = {need} positions, but the model holds "
            f"{max_length} (its config.json); use a model with a longer context (e.g. model=llada_8b_instruct, or "
            f"offline model=fixture_llada_tiny, random weights for trying the pipeline), fewer samples (n_samples), "
            f"shorter prompts (task.num_fewshot) or a smaller gen_length")


def prepare(cfg, root: str | Path, memo: dict | None = None) -> Prepared:
    """Everything a job checks before it loads the model or writes a file: the task's arguments,
    the model folder (or the hub id's small files) and checkpoint, the tokenizer, the samples of
    this shard and their prompts, which must fit the model's context with gen_length. Raises a
    one-line ``ConfigError``. ``memo``: a dict shared over the cells of a sweep, so that each task,
    tokenizer and prompt set is built once."""
    def make_task():
        try:
            return instantiate(cfg.task)          # bad task arguments fail here, before the model
        except Exception as e:
            cause = e.__cause__ or e
            raise ConfigError(f"task {cfg.task.name!r}: {type(cause).__name__}: {cause}") from e

    task = _memo(memo, ("task", _yaml(cfg.task)), make_task)
    model_path = resolve_model_path(cfg.model.path, root)
    folder, shape = _memo(memo, ("model", model_path), lambda: check_model(model_path))

    def make_tokenizer():
        try:
            return instantiate(cfg.model.tokenizer) if cfg.model.tokenizer else load_tokenizer(folder)
        except Exception as e:
            raise ConfigError(f"tokenizer of model {cfg.model.name!r}: {type(e).__name__}: {e}") from None

    tok_key = ("tokenizer", model_path, _yaml(cfg.model.tokenizer))
    tok = _memo(memo, tok_key, make_tokenizer)
    protocol = EvalProtocol(cfg.protocol, cfg.model.family, cfg.model.instruct)

    def encode():
        try:
            every = task.samples(cfg.n_samples, seed=cfg.seed)
            samples = every[slice(*shard_range(len(every), cfg.shard))]  # all of them unless cfg.shard is set
            prompts = [torch.tensor(protocol.encode(tok, s.prompt, chat=s.meta.get("chat", True))) for s in samples]
        except Exception as e:
            raise ConfigError(f"task {cfg.task.name!r}: its prompts cannot be built ({type(e).__name__}: {e})") from None
        if not samples:
            raise ConfigError(f"shard={cfg.shard} holds none of the task's {len(every)} samples")
        return samples, prompts

    samples, prompts = _memo(memo, ("prompts", tok_key, _yaml(cfg.task), cfg.protocol, cfg.model.family,
                                    cfg.model.instruct, cfg.n_samples, cfg.seed, cfg.shard), encode)
    _check_context(cfg, task, samples, prompts, shape.max_length)
    return Prepared(task, model_path, tok, protocol, samples, prompts)
