"""Checkpoint folder (or hub id) -> model, and model -> checkpoint folder, in the official formats.

Reads ``config.json`` to pick the architecture, then ``model.safetensors`` or the shards listed in
``model.safetensors.index.json``. Never runs code shipped with a checkpoint and never unpickles
``.bin`` files. Tokenizers load with the standard transformers fast-tokenizer classes.

The family files name each checkpoint tensor by our *separate* parameter name (``...attn.q_proj.weight``);
the fused projections (``layers.FusedLinear``) get their parts concatenated at load and split
again at save, so a checkpoint written here has the official tensors and nothing else.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import dream, llada
from .layers import ModelConfig, Rotary, Transformer, fuse_tensors, init_weights, unfused_tensors

FAMILIES = {"llada": llada, "dream": dream}
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "README.md"]
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float64": torch.float64}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def family_of(raw: dict, where: str = "config.json"):
    if not isinstance(raw, dict):
        raise ValueError(f"{where} holds a JSON {type(raw).__name__}, not an object")
    model_type = str(raw.get("model_type", "")).lower()
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model_type {raw.get('model_type')!r} in {where}; valid: llada, Dream")
    return FAMILIES[model_type]


def _construct(config: ModelConfig, device, dtype: torch.dtype) -> Transformer:
    """Allocate the modules directly on ``device`` in ``dtype`` (no float32 detour for 8B models)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Transformer(config)
    finally:
        torch.set_default_dtype(previous)
    model.profile = FAMILIES[config.arch].PROFILE
    return model


def build_model(config: ModelConfig | dict, *, device="cpu", dtype=torch.float32,
                seed: int | None = None) -> Transformer:
    """A randomly initialised model of the given shape (a ModelConfig or a raw config.json dict)."""
    if isinstance(config, dict):
        config = family_of(config).parse_config(config)
    model = _construct(config, device, resolve_dtype(dtype))
    init_weights(model, seed=seed)
    return model.eval()


def resolve_path(path_or_hub_id: str | os.PathLike) -> Path:
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_hub_id)
    looks_local = text.startswith((".", "/", "~")) or os.sep in text and text.count("/") != 1
    if path.exists() or looks_local:
        raise FileNotFoundError(f"model folder not found: {text}")
    from huggingface_hub import snapshot_download  # hub id such as GSAI-ML/LLaDA-8B-Instruct

    try:
        return Path(snapshot_download(text, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated, ...
        raise FileNotFoundError(f"model {text!r} is neither a local folder nor downloadable: {e}") from e


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def read_config(folder: str | os.PathLike):
    """(family module, ModelConfig) of a checkpoint folder's config.json, checked (see
    ``config_checks``); every problem is a one-line error naming the file."""
    cfg_file = Path(folder) / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"no config.json in {folder}")
    raw = _read_json(cfg_file)
    fam = family_of(raw, str(cfg_file))
    try:
        return fam, fam.parse_config(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{cfg_file}: {e}") from None


def _shard_paths(index: Path) -> list[str]:
    """The shard names of ``model.safetensors.index.json``, each a relative path inside its folder."""
    weight_map = _read_json(index)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no 'weight_map' object")
    shards = sorted({str(s) for s in weight_map.values()})
    # lexical check, not resolve(): hub snapshots hold symlinks into the cache's blob folder
    outside = [s for s in shards if os.path.isabs(s) or os.path.normpath(s).split(os.sep)[0] in ("..", ".", "")]
    if outside:
        raise ValueError(f"{index} lists shard(s) outside its folder: {', '.join(outside)}")
    return shards


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = [folder / s for s in _shard_paths(index)]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"shards listed in {index} are missing: {', '.join(missing)}")
        return files
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if others:
        return [folder / n for n in others]
    bins = sorted(p.name for p in folder.glob("*.bin"))
    hint = f" (found {', '.join(bins)}: pickled .bin weights are never loaded; convert to safetensors)" if bins else ""
    raise FileNotFoundError(f"no safetensors weights in {folder}{hint}")


def load_model(path_or_hub_id, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | str | None = torch.float32) -> Transformer:
    """Load a LLaDA or Dream checkpoint folder (or hub id, when online) into our own modules.

    The returned model's ``forward(input_ids)`` gives logits (B, L, V); ``model.config`` is a
    :class:`ModelConfig`, ``model.profile`` the family's :class:`DecodingProfile`.
    Raises FileNotFoundError for a missing folder/config/weights and ValueError for an unknown
    ``model_type`` or weights with missing, unexpected or mis-shaped tensors.
    """
    from safetensors import safe_open

    dtype = resolve_dtype(dtype)
    folder = resolve_path(path_or_hub_id)
    fam, config = read_config(folder)
    names = fam.param_names(config)
    files = _weight_files(folder)

    with torch.device("meta"):
        model = Transformer(config)
    expected = {k: tuple(v.shape) for k, v in unfused_tensors(model, model.state_dict()).items()}
    state, unexpected, misshaped = {}, [], []
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                ours = names.get(key)
                if ours is None:
                    if not key.endswith("rotary_emb.inv_freq"):
                        unexpected.append(key)
                    continue
                t = st.get_tensor(key)
                if tuple(t.shape) != expected[ours]:
                    misshaped.append(f"{key} {tuple(t.shape)} != {expected[ours]}")
                    continue
                state[ours] = t.to(dtype)
    missing = [k for k, v in names.items() if v not in state and not any(k in m for m in misshaped)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s) e.g. {missing[0]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s) e.g. {unexpected[0]}")
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)} tensor(s) e.g. {misshaped[0]}")
    if problems:
        raise ValueError(f"weights in {folder} do not match config.json: " + "; ".join(problems))

    model = _construct(config, "meta", dtype)
    model.load_state_dict(fuse_tensors(model, state), strict=True, assign=True)
    model.rotary = Rotary(config.head_dim, config.rope_theta)  # non-persistent buffer: rebuild off meta
    model.name_or_path = str(path_or_hub_id)
    model.folder = str(folder)
    return model.to(device).eval()


def local_config(path) -> ModelConfig | None:
    """The checked ModelConfig of a local checkpoint folder's config.json (None when ``path`` is not a
    folder, e.g. a hub id: its config comes with ``load_model``)."""
    return read_config(path)[1] if path is not None and Path(path).is_dir() else None


def check_checkpoint(folder: str | os.PathLike):
    """Everything ``load_model`` checks before reading a tensor (config.json, the weight files and
    the shard index): a one-line error, or the ModelConfig. Cheap: no weights are read."""
    _, config = read_config(folder)
    _weight_files(Path(folder))
    return config


def save_model(model: Transformer, folder: str | os.PathLike, extra_config: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the family's official format."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fam = FAMILIES[model.config.arch]
    ours = unfused_tensors(model, model.state_dict())
    tensors = {ckpt: ours[name].detach().to("cpu").contiguous()
               for ckpt, name in fam.param_names(model.config).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = fam.to_config_json(model.config)
    cfg.update(extra_config or {})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


def load_tokenizer(path_or_hub_id):
    """The checkpoint's tokenizer through the standard fast-tokenizer class (no remote code).

    Dream ships a custom tokenizer class that is a Qwen2 BPE; its ``tokenizer.json`` loads with
    ``PreTrainedTokenizerFast`` directly, and the chat template comes from tokenizer_config.json.
    """
    from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerFast

    folder = resolve_path(path_or_hub_id)
    if not (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"no tokenizer files (tokenizer.json) in {folder}")
    try:
        # An empty config: transformers knows neither model_type (llada, Dream), and reading
        # config.json only makes it warn; the class comes from tokenizer_config.json.
        return AutoTokenizer.from_pretrained(str(folder), config=PretrainedConfig(), trust_remote_code=False,
                                             use_fast=True)
    except (ValueError, OSError, KeyError):
        cfg_file = folder / "tokenizer_config.json"
        kwargs = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        kwargs = {k: v for k, v in kwargs.items() if k not in ("auto_map", "tokenizer_class")}
        return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **kwargs)
