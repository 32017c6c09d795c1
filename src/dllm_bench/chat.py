"""Chat with a diffusion LM and watch it decode: ``python -m dllm_bench.chat [key=value ...]``.

    python -m dllm_bench.chat                                       # the shipped tiny LLaDA, dual + threshold 0.9
    python -m dllm_bench.chat model=dream_tiny_arith cache=prefix decoding=fixed
    python -m dllm_bench.chat model=llada_8b_instruct device=cuda dtype=bfloat16 gen_length=256 block_length=32

The overrides are those of ``run.py`` (same config groups, same checks; ``stop_at_eos`` defaults to
true here). Each answer's current block is drawn live in the terminal as it unmasks (masked
positions as ``░``, EOS and other special tokens as ``·``), then the answer is printed with its tokens/s, NFE and forwards per token.
An instruct model (``model.instruct=true``) chats over its chat template with the conversation so
far; a base model (the tiny arith models) gets each line as a fresh prompt. Between turns:
``/set KEY VALUE`` (any override: ``/set threshold 0.7``, ``/set cache prefix``, ``/set decoding
fixed``), checked like the command line, a bad value a one-line error; ``/show``, ``/reset``,
``/help``, ``/quit``. Ctrl-C or Ctrl-D (EOF) ends the chat.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
DEFAULTS = ["stop_at_eos=true", "logger=none", "progress=false"]
MASK_GLYPH, SPECIAL_GLYPH = "░", "·"  # a masked position; EOS and other special tokens
HELP = """commands:
  /set KEY VALUE   change a setting for the next answers, as on the command line:
                   /set threshold 0.7 · /set cache prefix · /set decoding fixed · /set gen_length 128
  /show            the current settings
  /reset           forget the conversation (instruct models)
  /help            this text
  /quit            leave (or Ctrl-D / Ctrl-C)"""


class ChatError(ValueError):
    """A bad setting, reported in one line; the chat goes on with the previous one."""


def compose(overrides: list[str]):
    """The run.py config for ``overrides`` (after ``DEFAULTS``), checked; ChatError if bad."""
    from hydra import compose as _compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .config import ConfigError, check_override_keys, validate

    try:
        check_override_keys(overrides, CONF)
        if not GlobalHydra.instance().is_initialized():
            initialize_config_dir(config_dir=str(CONF), version_base="1.3")
        cfg = _compose("config", overrides=[*DEFAULTS, *overrides])
        validate(cfg)
    except ConfigError as e:
        raise ChatError(str(e)) from None
    except Exception as e:  # Hydra / OmegaConf composition errors: their first line names the value
        lines = str(e).strip().splitlines() or [type(e).__name__]
        if e.__cause__ is not None:  # "Error merging override x=y" says why in its cause
            lines[0] += ": " + (str(e.__cause__).strip().splitlines() or [""])[0]
        options = []  # Hydra lists a group's options after "Available options", one per tab-indented line
        for ln in lines[next((i + 1 for i, ln in enumerate(lines) if ln.startswith("Available options")), len(lines)):]:
            if not ln.startswith("\t"):
                break
            options.append(ln.strip())
        detail = next((ln.strip() for ln in lines[1:] if ln.strip() and not ln.startswith(("\t", "Available"))), "")
        raise ChatError(lines[0] + (f" (valid: {', '.join(options)})" if options else f": {detail}" if detail else "")) from None
    return cfg


def describe(cfg) -> str:
    """The settings in one line."""
    quiet = {"name": None, "_target_": None, "temperature": 0.0, "remasking": "low_confidence"}  # left out at these
    args = " ".join(f"{k}={v}" for k, v in cfg.decoding.items() if v is not None and (k not in quiet or quiet[k] != v)
                    and k not in ("name", "_target_"))
    return (f"{cfg.model.name} · {cfg.cache.name} cache · {cfg.decoding.name}" + (f" ({args})" if args else "")
            + f" · gen_length {cfg.gen_length} · block_length {cfg.block_length} · steps {cfg.steps}"
            + f" · {cfg.device} {cfg.dtype}")


class Live:
    """Draws the block being decoded on one terminal line, redrawn after every forward."""

    def __init__(self, out, tokenizer, mask_id: int, prompt_len: int, n_blocks: int, enabled: bool):
        self.out, self.tok, self.mask_id, self.P, self.n_blocks = out, tokenizer, mask_id, prompt_len, n_blocks
        self.enabled = enabled
        self.width = max(shutil.get_terminal_size((100, 24)).columns - 1, 20)
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])

    def _text(self, ids) -> str:
        out = []
        for t in ids:
            if t == self.mask_id:
                out.append(MASK_GLYPH)
            elif t in self.special:
                out.append(SPECIAL_GLYPH)
            else:
                out.append(self.tok.decode([t]).replace("\n", "⏎").replace("\r", ""))
        return "".join(out)

    def __call__(self, info) -> None:
        if not self.enabled:
            return
        x = info.x[0].tolist()
        done = self._text(x[self.P:info.block_start]).replace(MASK_GLYPH, "")
        block = self._text(x[info.block_start:info.block_end])
        head = f"[block {info.block + 1}/{self.n_blocks} · step {info.step + 1}] "
        room = self.width - len(head) - len(block) - 2
        tail = done[-room:] if room > 0 else ""
        line = (head + tail + "▕" + block + "▏")[: self.width]
        self.out.write("\r\x1b[2K" + line)
        self.out.flush()

    def clear(self) -> None:
        if self.enabled:
            self.out.write("\r\x1b[2K")
            self.out.flush()


class Chat:
    """One chat session: the model of the current settings, the conversation, one answer per turn."""

    def __init__(self, overrides: list[str], out=sys.stdout):
        self.out, self.overrides = out, list(overrides)
        self.cfg = compose(self.overrides)
        self.history: list[dict] = []
        self.model = self.tok = None
        self._loaded: tuple | None = None
        self._load()

    # ------------------------------------------------------------------ settings
    def _load(self) -> None:
        """(Re)load the model and tokenizer when the model, device or dtype changed."""
        import torch
        from hydra.utils import instantiate

        from . import load_model, load_tokenizer
        from .config import ConfigError
        from .job import set_threads
        from .models.loading import resolve_dtype
        from .prepare import check_model, resolve_model_path

        cfg = self.cfg
        key = (cfg.model.path, cfg.device, cfg.dtype, str(cfg.model.tokenizer))
        if key == self._loaded:
            return
        try:
            path = resolve_model_path(cfg.model.path, ROOT)
            check_model(path)
        except ConfigError as e:
            raise ChatError(str(e)) from None
        set_threads(cfg)
        self.out.write(f"loading {cfg.model.name} ...\n")
        self.out.flush()
        self.model = load_model(path, device=torch.device(cfg.device), dtype=resolve_dtype(cfg.dtype))
        self.tok = instantiate(cfg.model.tokenizer) if cfg.model.tokenizer else load_tokenizer(path)
        self._loaded, self.history = key, []

    def set(self, key: str, value: str) -> str:
        """Apply ``key=value`` for the next answers (checked first); returns the new settings line."""
        overrides = [o for o in self.overrides if o.split("=", 1)[0] != key] + [f"{key}={value}"]
        cfg = compose(overrides)
        old_cfg, self.cfg = self.cfg, cfg
        try:
            self._load()
        except Exception:
            self.cfg = old_cfg
            raise
        self.overrides = overrides
        return describe(cfg)

    # ------------------------------------------------------------------ one answer
    def prompt_ids(self, text: str) -> list[int]:
        """The prompt of the next answer: the conversation through the chat template (instruct
        models), else ``text`` alone; the oldest turns are dropped when it would not fit."""
        from .tasks.tokens import encode_prompt

        cfg, tok = self.cfg, self.tok
        limit = self.model.config.max_length - cfg.gen_length
        if not (cfg.model.instruct and getattr(tok, "chat_template", None)):
            ids = encode_prompt(tok, text, chat=False)
        else:
            messages = self.history + [{"role": "user", "content": text}]
            while True:
                rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                ids = list(tok(rendered, add_special_tokens=False)["input_ids"])
                if len(ids) <= limit or len(messages) <= 1:
                    break
                messages = messages[2:]  # the oldest user / assistant pair
            self.history = messages[:-1]
        if len(ids) > limit:
            raise ChatError(f"prompt {len(ids)} + gen_length {cfg.gen_length} tokens exceed the model's maximum "
                            f"length {self.model.config.max_length}")
        return ids

    def answer(self, text: str) -> str:
        """Generate the answer to ``text``, drawing it live; returns the statistics line."""
        import torch

        from . import generate
        from .job import engine_kwargs
        from .tasks.tokens import decode_generated, stop_token_ids

        cfg = self.cfg
        ids = self.prompt_ids(text)
        engine = engine_kwargs(cfg)
        n_blocks = cfg.gen_length // (cfg.block_length or cfg.gen_length)
        live = Live(self.out, self.tok, self.model.config.mask_token_id, len(ids), n_blocks,
                    enabled=self.out.isatty())
        seed = cfg.seed if engine["decoding"].temperature > 0 else None
        gen = torch.Generator(self.model.device).manual_seed(seed) if seed is not None else None
        t0 = time.perf_counter()
        try:
            res = generate(self.model, [ids], generator=gen, on_step=live, **engine)
        finally:
            live.clear()
        seconds = time.perf_counter() - t0
        reply, n = decode_generated(res.tokens[0], stop_token_ids(self.tok, self.model.config.eos_token_id), self.tok)
        if cfg.model.instruct and getattr(self.tok, "chat_template", None):
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        self.out.write(reply + "\n")
        rate = n / seconds if seconds > 0 else float("nan")
        return (f"[{n} tokens in {seconds:.2f} s · {rate:.1f} tokens/s · NFE {res.nfe} · "
                f"{res.nfe / max(n, 1):.2f} forwards/token · prompt {len(ids)} tokens]")

    # ------------------------------------------------------------------ the loop
    def command(self, line: str) -> bool:
        """Run a /command; False when the chat should end."""
        parts = line.split()
        name = parts[0].lower()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.out.write(HELP + "\n")
        elif name == "/show":
            self.out.write(describe(self.cfg) + "\n")
        elif name == "/reset":
            self.history = []
            self.out.write("conversation cleared\n")
        elif name == "/set":
            if len(parts) != 3:
                raise ChatError("usage: /set KEY VALUE (e.g. /set threshold 0.7)")
            self.out.write("now: " + self.set(parts[1], parts[2]) + "\n")
        else:
            raise ChatError(f"unknown command {parts[0]!r}; /help lists them")
        return True

    def run(self, read=input) -> int:
        base = "" if self.cfg.model.instruct else " (base model: each line is a fresh prompt)"
        self.out.write(f"dllm-bench chat · {describe(self.cfg)}{base}\n/help for commands, Ctrl-D to leave\n")
        while True:
            try:
                line = read("you> ").strip()
            except EOFError:
                self.out.write("\nbye\n")
                return 0
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not self.command(line):
                        self.out.write("bye\n")
                        return 0
                else:
                    self.out.write("model> ")
                    self.out.flush()
                    self.out.write(self.answer(line) + "\n")
            except ChatError as e:
                self.out.write(f"error: {e}\n")
            self.out.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # e.g. the checkpoint-type notice of the tiny models
    except ImportError:
        pass
    for category in (UserWarning, FutureWarning):  # library notices about the checkpoints' formats
        warnings.filterwarnings("ignore", category=category)
    try:
        chat = Chat(argv)
        return chat.run()
    except ChatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        sys.stdout.write("\x1b[0m\nbye\n")
        return 0


if __name__ == "__main__":
    sys.exit(main())
