"""Train the shipped tiny diffusion LMs on the ``arith`` task (LLaDA's SFT objective).

    PYTHONPATH=src python -m dllm_bench.train arch=llada out=assets/models/llada-tiny-arith
    PYTHONPATH=src python -m dllm_bench.train arch=dream out=assets/models/dream-tiny-arith

Objective, per sequence: draw t ~ U(0, 1), mask each answer token (EOS padding included) with
probability p = (1 - eps) t + eps, never the prompt; loss = cross-entropy on the masked tokens
weighted 1 / p, summed and divided by the answer length, averaged over the batch. For a model whose
profile shifts logits (Dream) the logit at position i - 1 predicts token i.

Every batch is a function of ``(seed, step)`` alone, so a run resumed from its partial checkpoint
(``out/.partial/state.pt``, written every ``save_every`` steps) continues the same trajectory. The
finished folder holds ``config.json`` + ``model.safetensors`` (official format), the tokenizer, the
loss curve (``loss.csv``, ``loss.png``), ``train_config.yaml`` and a model card ``README.md``.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from .metrics.timing import cpu_name
from .models import ModelConfig, build_model, save_model
from .tasks.arithmetic import ArithmeticTask
from .tokenizer import build_tokenizer, save_tokenizer, special_ids, vocab

ARCHS = ("llada", "dream")
EPS = 1e-3  # smallest masking probability (LLaDA's forward process)
_RUN_ONLY = ("out", "overwrite", "threads", "save_every", "log_every", "eval_samples",
             "eval_gen_length", "eval_block_length")  # keys that may change on resume


@dataclass
class ArchConfig:
    name: str = MISSING
    d_model: int = MISSING
    n_layers: int = MISSING
    n_heads: int = MISSING
    n_kv_heads: int = MISSING
    mlp_hidden: int = MISSING
    rope_theta: float = MISSING  # sequences are < 128 tokens: high frequencies make position look-ups sharp
    norm_eps: float = 1e-5
    qkv_bias: bool = MISSING
    tie_embeddings: bool = False
    max_length: int = 512

    def __post_init__(self):
        if self.name not in ARCHS:
            raise ValueError(f"unknown arch {self.name!r}; valid: {', '.join(ARCHS)}")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("d_model must divide by n_heads and n_heads by n_kv_heads")


@dataclass
class TaskConfig:
    n_steps: int = MISSING
    modulus: int = MISSING
    ops: str = MISSING
    var_prob: float = MISSING       # values: conf/train/config.yaml (their one source)
    max_operand: int | None = MISSING

    def __post_init__(self):
        ArithmeticTask(**asdict(self))  # raises ValueError listing what is wrong


@dataclass
class TrainConfig:
    arch: ArchConfig = MISSING
    task: TaskConfig = MISSING
    out: str = "???"
    overwrite: bool = MISSING
    seed: int = MISSING
    threads: int = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    min_lr: float = MISSING
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    grad_clip: float = MISSING
    gen_lengths: list = MISSING
    train_n_steps: list = MISSING
    save_every: int = MISSING
    log_every: int = MISSING
    eval_samples: int = MISSING
    eval_gen_length: int = MISSING
    eval_block_length: int = MISSING

    def __post_init__(self):
        task = self.task if isinstance(self.task, dict) else asdict(self.task)
        need = ArithmeticTask(**task).max_answer_chars + 1
        if not self.gen_lengths or min(self.gen_lengths) < need:
            raise ValueError(f"gen_lengths {list(self.gen_lengths)} must be >= {need} (longest answer + EOS)")
        if self.steps < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("steps, batch_size and threads must be >= 1")
        n_max = task["n_steps"]
        bad = [n for n in self.train_n_steps if not (isinstance(n, int) and 1 <= n <= n_max)]
        if not self.train_n_steps or bad:
            raise ValueError(f"train_n_steps {list(self.train_n_steps)} must be integers in 1..task.n_steps ({n_max})")


def model_config(cfg: TrainConfig) -> ModelConfig:
    a = cfg.arch
    return ModelConfig(arch=a.name, vocab_size=len(vocab()), d_model=a.d_model, n_layers=a.n_layers,
                       n_heads=a.n_heads, n_kv_heads=a.n_kv_heads, mlp_hidden=a.mlp_hidden,
                       rope_theta=a.rope_theta, norm_eps=a.norm_eps, qkv_bias=a.qkv_bias,
                       tie_embeddings=a.tie_embeddings, max_length=a.max_length,
                       rope_full_precision=a.name == "llada", **special_ids())


def make_batch(cfg: TrainConfig, tok, step: int) -> dict:
    """The training batch of ``step``: left-padded prompt ++ answer ++ EOS padding (a function of seed, step)."""
    n_steps = cfg.train_n_steps[step % len(cfg.train_n_steps)]
    task = ArithmeticTask(**{**asdict(cfg.task), "n_steps": n_steps}, split="train", seed=cfg.seed)
    stream = task.problems(seed=step)
    probs = [next(stream) for _ in range(cfg.batch_size)]
    gen_length = cfg.gen_lengths[step % len(cfg.gen_lengths)]
    prompts = [tok.encode(p.prompt, add_special_tokens=False) for p in probs]
    answers = [tok.encode(p.solution, add_special_tokens=False) for p in probs]
    P = max(map(len, prompts))
    ids = torch.full((len(probs), P + gen_length), tok.eos_token_id, dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids[i, : P - len(p)] = tok.pad_token_id
        ids[i, P - len(p): P] = torch.tensor(p)
        ids[i, P: P + len(a)] = torch.tensor(a)
    attn = torch.ones_like(ids, dtype=torch.bool)
    for i, p in enumerate(prompts):
        attn[i, : P - len(p)] = False
    positions = (attn.long().cumsum(1) - 1).clamp(min=0)  # count from each row's first real token
    answer = torch.zeros_like(attn)
    answer[:, P:] = True
    if bool(attn.all()):  # no padding: let attention take its unmasked (faster) path
        attn = positions = None
    return {"ids": ids, "attn": attn, "positions": positions, "answer": answer}


def diffusion_loss(model, batch: dict, mask_id: int, gen: torch.Generator) -> torch.Tensor:
    """LLaDA SFT loss on one batch (see the module docstring)."""
    ids, answer = batch["ids"], batch["answer"]
    B = ids.shape[0]
    t = torch.rand(B, 1, generator=gen)
    p = (1 - EPS) * t + EPS  # (B, 1)
    masked = (torch.rand(ids.shape, generator=gen) < p) & answer  # (B, L)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(noisy, position_ids=batch["positions"], attention_mask=batch["attn"])  # (B, L, V)
    if model.profile.shift_logits:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # logits[:, i-1] predicts token i
    ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
    weight = 1.0 / (p.expand_as(ids)[masked] * answer.sum(1, keepdim=True).expand_as(ids)[masked])
    return (ce * weight).sum() / B


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))


def _comparable(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in _RUN_ONLY}


def prepare_out(cfg: TrainConfig, cfg_dict: dict) -> dict | None:
    """Refuse / wipe / resume the output folder; returns the partial state to resume, if any."""
    out = Path(cfg.out)
    state_file = out / ".partial" / "state.pt"
    if out.exists() and cfg.overwrite:
        shutil.rmtree(out)
    elif state_file.exists():
        state = torch.load(state_file, weights_only=False)
        if _comparable(state["config"]) != _comparable(cfg_dict):
            raise ValueError(f"{out} holds a partial run with a different config; pass overwrite=true to restart")
        return state
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output folder {out} exists; pass overwrite=true to replace it")
    return None


def train(cfg: TrainConfig, cfg_dict: dict | None = None, progress: bool = True):
    """Run (or resume) a training run; returns (model, per-step losses)."""
    from tqdm import tqdm

    cfg_dict = cfg_dict if cfg_dict is not None else asdict(cfg)
    torch.set_num_threads(cfg.threads)
    state = prepare_out(cfg, cfg_dict)
    out = Path(cfg.out)
    tok = build_tokenizer()
    model = build_model(model_config(cfg), seed=cfg.seed).train()
    decay = [p for p in model.parameters() if p.dim() > 1]
    other = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    start, history, elapsed0, cpu0 = 0, [], 0.0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        start, history = state["step"], state["history"]
        elapsed0, cpu0 = history[-1]["elapsed_s"], history[-1]["cpu_s"]
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc=f"train {cfg.arch.name}")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        batch = make_batch(cfg, tok, step)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        loss = diffusion_loss(model, batch, tok.mask_token_id, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        history.append({"step": step + 1, "loss": loss.item(), "lr": lr_at(cfg, step),
                        "elapsed_s": round(elapsed0 + time.perf_counter() - t0, 2),
                        "cpu_s": round(cpu0 + time.process_time() - c0, 2)})
        if (step + 1) % cfg.log_every == 0:
            recent = [h["loss"] for h in history[-cfg.log_every:]]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            (out / ".partial").mkdir(parents=True, exist_ok=True)
            tmp = out / ".partial" / "state.pt.tmp"
            torch.save({"step": step + 1, "model": model.state_dict(), "optim": opt.state_dict(),
                        "history": history, "config": cfg_dict}, tmp)
            tmp.replace(out / ".partial" / "state.pt")
    model.eval()
    finish(cfg, cfg_dict, model, history)
    return model, [h["loss"] for h in history]


def finish(cfg: TrainConfig, cfg_dict: dict, model, history: list[dict]) -> None:
    """Write the checkpoint folder: weights, tokenizer, loss curve, config, model card."""
    out = Path(cfg.out)
    save_model(model, out)
    save_tokenizer(out, model_max_length=cfg.arch.max_length)
    write_loss_curve(out, history)
    evaluation = quick_eval(cfg, model)
    write_card(out, cfg, cfg_dict, history, evaluation)
    shutil.rmtree(out / ".partial", ignore_errors=True)


def quick_eval(cfg: TrainConfig, model) -> dict | None:
    """Held-out accuracy with threshold 0.9 + dual cache (None when the engine has no ``generate``)."""
    if cfg.eval_samples <= 0:
        return None
    task = ArithmeticTask(**asdict(cfg.task), split="heldout", seed=0)
    return evaluate(model, build_tokenizer(), task, task.samples(cfg.eval_samples), cache="dual",
                    decoding="threshold", threshold=0.9, gen_length=cfg.eval_gen_length,
                    block_length=cfg.eval_block_length, steps=cfg.eval_gen_length)


def evaluate(model, tok, task: ArithmeticTask, samples, *, batch_size: int = 100, **gen_kwargs) -> dict:
    """Score ``samples`` through the job's evaluation path (``dllm_bench.evaluate.generate_all``):
    accuracy, NFE, generated tokens / s.

    ``nfe_mean`` is the mean of each row's own forward count (its cost at batch size 1);
    ``nfe_batch_mean`` the forwards per batch (a threshold batch runs until its slowest row is
    done). Tokens are counted up to each row's first EOS / stop; ``tokens_per_s`` uses the batched
    wall time of this one pass (the trainer's quick look, not a benchmark).
    """
    from .evaluate import generate_all
    from .tasks.tokens import stop_token_ids

    prompts = [torch.tensor(tok.encode(s.prompt, add_special_tokens=False)) for s in samples]
    with torch.inference_mode():
        rows, info = generate_all(model, tok, prompts, gen_kwargs, batch_size=batch_size,
                                  stop_ids=stop_token_ids(tok, model.config.eos_token_id),
                                  stop_sequences=task.stop_sequences)
    correct = sum(task.score(s, r["output"]).correct for s, r in zip(samples, rows))
    n_batches = -(-len(samples) // batch_size)
    return {"accuracy": correct / len(samples), "nfe_mean": sum(r["nfe"] for r in rows) / len(rows),
            "nfe_batch_mean": info["batch_nfe"] / n_batches,
            "tokens_per_s": sum(r["n_generated_tokens"] for r in rows) / info["wall_s"], "wall_s": info["wall_s"],
            "n_samples": len(samples)}


def write_loss_curve(out: Path, history: list[dict]) -> None:
    """``loss.csv`` (step, loss, lr, elapsed_s) and ``loss.png`` (raw and smoothed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["step,loss,lr,elapsed_s,cpu_s"] + [
        f"{h['step']},{h['loss']:.6f},{h['lr']:.6g},{h['elapsed_s']},{h['cpu_s']}" for h in history]
    (out / "loss.csv").write_text("\n".join(lines) + "\n")
    steps, losses = [h["step"] for h in history], [h["loss"] for h in history]
    k = max(1, len(losses) // 50)
    smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label=f"mean of {k}")
    ax.set_xlabel("step"), ax.set_ylabel("masked-diffusion loss"), ax.set_yscale("log"), ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)


EVAL_BEGIN, EVAL_END = "<!-- eval_tiny:begin -->", "<!-- eval_tiny:end -->"


def write_card(out: Path, cfg: TrainConfig, cfg_dict: dict, history: list[dict], evaluation: dict | None) -> None:
    """The model card: what the model is, how it was trained, the accuracy table (filled by eval_tiny)."""
    import yaml

    (out / "train_config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    task = ArithmeticTask(**asdict(cfg.task))
    tail = history[-min(50, len(history)):]
    example = task.samples(1)[0]
    consts = f"0..{task.modulus - 1}" if task.max_operand is None else f"1..{task.max_operand}"
    quick = ("not run (the engine's generate was unavailable)" if evaluation is None else
             f"{evaluation['accuracy']:.1%} on {evaluation['n_samples']} held-out problems "
             f"(threshold 0.9, dual cache, gen_length {cfg.eval_gen_length}, block_length {cfg.eval_block_length})")
    card = f"""# {out.name}

A tiny {cfg.arch.name.upper()}-architecture masked diffusion LM ({model_config(cfg).n_params() / 1e6:.2f} M
parameters, character tokenizer) trained from scratch by `dllm_bench.train` on the synthetic `arith` task
(`dllm_bench.tasks.arithmetic`): chained arithmetic (`{task.ops}`) modulo {task.modulus}, {task.n_steps} steps, constant
operands {consts}, an earlier variable as operand with probability {task.var_prob}, answered with a worked
solution, e.g. `{example.prompt}` -> `{example.meta['solution']}`. It exists so that every sweep of
dllm-bench runs for real on a CPU; it is not a general language model.

- Prompt: the problem text as is (no chat template, no BOS). Answer: the solution, then EOS padding.
- Use gen_length >= {task.gen_length} (longest answer {task.max_answer_chars} characters + EOS); trained with
  answer+EOS lengths {list(cfg.gen_lengths)}.
- Special tokens: mask `<|mask|>` = {special_ids()['mask_token_id']}, EOS `<|eos|>` = {special_ids()['eos_token_id']},
  pad `<|pad|>` = {special_ids()['pad_token_id']}.

## Training

LLaDA's SFT objective (answer tokens masked with probability t ~ U(0, 1), loss 1/t-weighted and normalised
by answer length; the prompt is never masked){"; Dream's one-position logit shift" if cfg.arch.name == "dream" else ""}.
Training problems have {', '.join(map(str, cfg.train_n_steps))} steps (one length per batch, cycled), evaluation ones {task.n_steps}.
{len(history)} steps of batch {cfg.batch_size}, AdamW, with `torch.set_num_threads({cfg.threads})`:
{history[-1]['elapsed_s'] / 60:.1f} min wall, {history[-1]['cpu_s'] / 60:.1f} min process CPU time on {cpu_name()}
(a 2-core machine shared with other jobs, so the wall time includes waiting); final loss (mean of last {len(tail)} steps)
{sum(h['loss'] for h in tail) / len(tail):.4f}. Loss curve: `loss.csv`, `loss.png`. Reproduce with

    PYTHONPATH=src python -m dllm_bench.train arch={cfg.arch.name} out={cfg.out} seed={cfg.seed}

Full config (`train_config.yaml`):

```yaml
{yaml.safe_dump(cfg_dict, sort_keys=False).strip()}
```

## Accuracy

End-of-training check: {quick}.

{EVAL_BEGIN}
Full table: run `PYTHONPATH=src python scripts/eval_tiny.py {out}`.
{EVAL_END}
"""
    (out / "README.md").write_text(card)


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def main() -> None:
    import hydra
    from omegaconf import OmegaConf

    _register()

    @hydra.main(config_path="../../conf/train", config_name="config", version_base="1.3")
    def _run(dcfg) -> None:
        cfg = OmegaConf.to_object(dcfg)  # runs the dataclasses' validation
        _, losses = train(cfg, OmegaConf.to_container(dcfg, resolve=True))
        print(json.dumps({"out": cfg.out, "steps": cfg.steps, "final_loss": losses[-1]}))

    _run()


if __name__ == "__main__":
    main()
