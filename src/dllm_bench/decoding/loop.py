"""THE block loop, written once: every cache policy and decoding rule plugs into it.

For each block of the generation, steps run until the block has no mask left or the rule's
budget is spent. Each step: the cache plans the forward (which positions are fed, whether it
refreshes), the rule may add extra query tokens, the model runs (twice the batch under
classifier-free guidance, or as the cache's own guidance decides), the rule predicts at its
target positions and decides what to unmask and re-mask, and the cache sees the result.
Rows of a batch decide independently; a row whose block is done simply has no candidates, so
each row's tokens (and its own forward count, ``nfe_per_row``) equal its batch-size-1 run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch

from ..models.kv import Where
from ..models.ops import ops_name
from .caches.base import Cache
from .graphs import static_buffers
from .rules.base import Rule
from .state import Decision, DecodeState, Extra, Plan


@dataclass
class StepInfo:
    """What a step callback sees after each forward (for traces and metrics)."""

    block: int
    step: int                  # 0 = the block's first forward
    block_start: int
    block_end: int
    window: tuple[int, int] | None  # the fed window (None for an index plan)
    x: torch.Tensor            # (B, L) the sequence after this step (do not modify)
    accepted: torch.Tensor     # (B, W) target positions unmasked by this step
    confidence: torch.Tensor   # (B, W) candidates' confidences (-inf elsewhere)
    remasked: torch.Tensor | None = None  # (B, W) decoded positions turned back to mask
    targets: tuple[int, int] = (0, 0)     # [start, end) of the W target positions
    plan: Plan | None = None


@dataclass
class LoopOutput:
    x: torch.Tensor
    nfe: int
    nfe_per_row: list[int]
    refreshes: int
    skipped_blocks: int = 0
    remasked_per_row: list[int] = field(default_factory=list)
    trace: list[dict] | None = None
    stats: dict = field(default_factory=dict)


class _Forward:
    """Runs one planned forward and returns the logits at the target positions (+ extra tokens)."""

    def __init__(self, state: DecodeState, kv):
        self.state, self.kv = state, kv
        self.shift = state.profile.shift_logits

    def inputs(self, rows: str):
        """(x, position ids, key mask) for rows "cond" (B), "uncond" (prompt masked) or "both" (2B)."""
        st = self.state
        x, pos, km = st.x, st.position_ids, st.key_mask
        if rows == "cond":
            return x, pos, km
        un = x.clone()
        un[:, :st.prompt_len] = st.mask_id
        if rows == "uncond":
            return un, pos, km
        dup = (lambda t: None if t is None else torch.cat([t, t]))
        return torch.cat([x, un]), dup(pos), dup(km)

    def fast(self, plan: Plan, ts: int, te: int) -> bool:
        window = plan.window(self.state.length)
        return window is not None and window[0] <= ts and te <= window[1]

    def target_rows(self, plan: Plan, ts: int, te: int):
        """(rows (B, W) of the fed tokens giving each target's logits, fresh (B, W))."""
        st = self.state
        B, L = st.batch, st.length
        if plan.index is None:
            qpos = torch.arange(*plan.window(L), device=st.device).expand(B, -1)
            qvalid = None
        else:
            qpos, qvalid = plan.index, plan.valid
        T = qpos.shape[1]
        slot = qpos if qvalid is None else torch.where(qvalid, qpos, L)
        qmap = torch.full((B, L + 1), -1, dtype=torch.long, device=st.device)
        qmap.scatter_(1, slot, torch.arange(T, device=st.device).expand(B, -1))
        qmap = qmap[:, :L]
        tpos = torch.arange(ts, te, device=st.device)
        src = qmap[:, tpos]
        if self.shift:  # Dream: position i from hidden state i-1 when that was fed, else its own
            prev = qmap[:, (tpos - 1).clamp(min=0)].masked_fill((tpos == 0)[None, :], -1)
            src = torch.where(prev >= 0, prev, src)
        return src.clamp(min=0), src >= 0

    def __call__(self, plan: Plan, ts: int, te: int, extra: Extra | None = None, rows: str = "cond",
                 target_rows: torch.Tensor | None = None) -> torch.Tensor:
        st, model = self.state, self.state.model
        L = st.length
        x, pos_ids, key_mask = self.inputs(rows)
        n = x.shape[0]
        if plan.index is None:
            start, end = plan.window(L)
            ids = x[:, start:end]
            pos = None if pos_ids is None else pos_ids[:, start:end]
            where = Where(start=start)
        else:
            index = plan.index if n == st.batch else torch.cat([plan.index, plan.index])
            valid = plan.valid if plan.valid is None or n == st.batch else torch.cat([plan.valid, plan.valid])
            ids = x.gather(1, index)
            pos = index if pos_ids is None else pos_ids.gather(1, index)
            where = Where(index=index, valid=valid)
            start = None
        if self.kv is None and (ids.shape[1] != L):
            raise RuntimeError("a cache without KV storage must feed the whole sequence")
        if target_rows is None:  # the fast path: targets inside the window, no extra tokens
            if self.shift:
                lo, hi = max(ts - start - 1, 0), te - start - 1
            else:
                lo, hi = ts - start, te - start
            logits = model(ids, position_ids=pos, attention_mask=key_mask, cache=self.kv, where=where,
                           logits_slice=slice(lo, hi), hooks=plan.hooks)
            if self.shift and ts == start:  # the window's first position keeps its own logits
                logits = torch.cat([logits[:, :1], logits], dim=1)
            return logits
        rows_idx = target_rows if n == st.batch else torch.cat([target_rows, target_rows])
        mask = key_mask
        if extra is not None:
            E, T = extra.ids.shape[1], ids.shape[1]
            dup = (lambda t: t if n == st.batch else torch.cat([t, t]))
            e_ids, e_pos, sees_main = dup(extra.ids), dup(extra.positions), dup(extra.sees_main)
            sees_extra = extra.sees_extra.expand(st.batch, E, E) if extra.sees_extra.dim() == 2 else extra.sees_extra
            sees_extra = dup(sees_extra)
            km = torch.ones((n, L), dtype=torch.bool, device=st.device) if key_mask is None else key_mask.bool()
            top = torch.cat([km[:, None, :].expand(n, T, L), torch.zeros((n, T, E), dtype=torch.bool, device=st.device)], 2)
            bottom = torch.cat([sees_main & km[:, None, :], sees_extra], 2)
            mask = torch.cat([top, bottom], 1)  # (n, T + E, L + E)
            if pos is None:  # a window without padding (an index plan always has positions)
                pos = torch.arange(start, start + T, device=st.device).expand(n, T)
            ids, pos = torch.cat([ids, e_ids], 1), torch.cat([pos, e_pos], 1)
            where = Where(start=where.start, index=where.index, valid=where.valid, n_extra=E)
            rows_idx = torch.cat([rows_idx, torch.arange(T, T + E, device=st.device).expand(n, E)], 1)
        return model(ids, position_ids=pos, attention_mask=mask, cache=self.kv, where=where,
                     logits_slice=rows_idx, hooks=plan.hooks)


def _work(state: DecodeState, plan: Plan, extra: Extra | None):
    """Per row: real (non-padding) tokens this forward computes, and those of a full forward —
    Python ints when every row has the same (a window, no padding), else (B,) tensors. Summed over
    the steps a row takes part in, times the layers, they make the hardware-independent cost
    counters ``layer_tokens_computed`` / ``layer_tokens_total`` (a batch reports the sum of its
    rows' batch-size-1 costs)."""
    L = state.length
    real = state.key_mask
    total = L if real is None else real.sum(-1)
    if plan.index is None:
        start, end = plan.window(L)
        fed = end - start if real is None else real[:, start:end].sum(-1)
    else:
        ok = torch.ones_like(plan.index, dtype=torch.bool) if plan.valid is None else plan.valid
        if real is not None:
            ok = ok & real.gather(1, plan.index)
        fed = ok.sum(-1)
    if extra is not None:
        fed = fed + extra.ids.shape[1]
    return fed, total


def _work_totals(log: list, batch: int, device) -> tuple[int, int]:
    """Sum of fed and full tokens over the logged steps, each counted for the rows that took part
    (one pass at the end: no per-step tensor work on the hot path)."""
    live = torch.stack([w[2] for w in log]).long()  # (S, B)
    cols = [torch.stack([torch.as_tensor(w[i], device=device).expand(batch) for w in log]) for i in (0, 1)]
    return int((cols[0] * live).sum()), int((cols[1] * live).sum())


def block_loop(state: DecodeState, cache: Cache, rule: Rule, *, stop_at_eos: bool = False, trace: bool = False,
               on_step: Callable[[StepInfo], None] | None = None, graphs: bool = False) -> LoopOutput:
    """Decode the masked tail of ``state.x`` (B, L) in place, block by block. See ``generate``.

    graphs: run every step on static buffers kept on the model, captured as CUDA graphs on a GPU
    (see ``graphs.py``); ``generate`` checks that the cache and rule allow it.
    """
    model, cfg, profile = state.model, state.config, state.profile
    cache.check_pair(rule, cfg.arch, profile)  # before any buffer or forward
    rule.check_pair(cache, cfg.arch, profile)
    mask_id, P = state.mask_id, state.prompt_len
    B, L = state.x.shape
    guided = state.cfg_scale > 0
    static = None
    if graphs:
        static = static_buffers(model, B, L, cache.uses_kv, state.key_mask is not None)
        static.load(state.x, state.position_ids, state.key_mask)
        x_out, state.x = state.x, static.x
        state.position_ids, state.key_mask = static.position_ids, static.attention_mask
        kv = static.kv
    else:
        kv = model.new_cache(2 * B if guided else B, L) if cache.uses_kv else None
    x = state.x
    forward = _Forward(state, kv)
    can_exit = cache.early_exit or rule.exit_when_done
    forces_first = profile.refresh_forces_first and state.blocked
    nfe = refreshes = skipped = 0
    nfe_row = torch.zeros(B, dtype=torch.long, device=x.device)
    work_log: list = []  # (fed, full, live rows) per forward without layer hooks: see _work
    remasked_row = torch.zeros(B, dtype=torch.long, device=x.device)
    records: list[dict] | None = [] if trace else None
    state.rule = rule
    state.fused_ops = ops_name(model) == "fused"
    cache.setup(state)
    rule.setup(state)

    for b in range(state.n_blocks):
        s, e = P + b * state.block_length, P + (b + 1) * state.block_length
        state.block, state.start, state.end, state.step = b, s, e, 0
        ts, te = (s, e) if rule.targets == "block" else (P, L)
        state.targets = (ts, te)
        rule.begin_block(state)
        cache.begin_block(state)
        while True:
            active = (x[:, s:e] == mask_id).any(-1)
            if state.step > 0 and (rule.exhausted(state) or (can_exit and not bool(active.any()))):
                break
            state.live = active if state.step > 0 and can_exit else torch.ones_like(active)
            plan = cache.plan(state)
            extra = rule.extra_queries(state)
            general = extra is not None or not forward.fast(plan, ts, te)
            rows, fresh = forward.target_rows(plan, ts, te) if general else (None, None)
            state.fresh = fresh

            if static is not None:
                pred = static.run((plan.key, ts, te, rule.predict_key),
                                  lambda plan=plan, ts=ts, te=te: rule.predict(forward(plan, ts, te), state))
                calls = 1
            else:
                if guided:
                    logits, calls = cache.guided(partial(forward, plan, ts, te, extra, target_rows=rows), state, plan)
                else:
                    logits, calls = forward(plan, ts, te, extra, "cond", rows), 1
                n_extra = 0 if extra is None else extra.ids.shape[1]
                main = logits[:, :te - ts] if n_extra else logits
                pred = rule.predict(main, state)
                if n_extra:
                    pred.extra_logits = logits[:, te - ts:]
            row_calls = calls  # a cache's guidance may run its unconditional pass for some rows only
            if isinstance(calls, torch.Tensor):
                calls = int(calls.max())
            state.calls += calls
            nfe += calls
            if plan.hooks is None:  # layer x token work vs a full forward (layer hooks count their own)
                work_log.append((*_work(state, plan, extra), state.live))
            nfe_row += row_calls * state.live
            refreshes += int(plan.refresh)

            tgt = x[:, ts:te]  # a view: writes land in x
            cand = tgt == mask_id
            if ts != s or te != e:
                in_block = torch.zeros(te - ts, dtype=torch.bool, device=x.device)
                in_block[s - ts:e - ts] = True
                cand = cand & in_block
            if fresh is not None:
                cand = cand & fresh
            pred.conf = pred.conf.masked_fill(~cand, -torch.inf)
            decision = rule.select(pred, cand, state)
            if not isinstance(decision, Decision):
                decision = Decision(decision)
            unmask = decision.unmask & cand
            if state.step == 0 and forces_first:  # Dream's refresh unmasks the block's first position only
                unmask = torch.zeros_like(cand)
                unmask[:, s - ts] = cand[:, s - ts]
            new = torch.where(unmask, pred.x0, tgt)
            remask = None
            if decision.remask is not None:
                remask = decision.remask & (tgt != mask_id) & ~unmask
                new = new.masked_fill(remask, mask_id)
                remasked_row += remask.sum(-1)
            tgt.copy_(new)  # no host sync
            cache.after_step(state, plan)
            window = plan.window(L) if records is not None or on_step is not None else None
            if records is not None:
                rec = {"block": b, "step": state.step, "window": window and list(window),
                       "accepted": unmask.sum(-1).tolist(),
                       "accepted_confidence": [pred.conf[i][unmask[i]].tolist() for i in range(B)]}
                if remask is not None:
                    rec["remasked"] = remask.sum(-1).tolist()
                records.append(rec)
            if on_step is not None:
                on_step(StepInfo(b, state.step, s, e, window, x, unmask, pred.conf, remask, (ts, te), plan))
            state.step += 1
        if stop_at_eos and cfg.eos_token_id is not None and b < state.n_blocks - 1:
            done = (x[:, P:e] == cfg.eos_token_id).any(-1)
            if bool(done.all()):
                x[:, e:] = cfg.eos_token_id
                skipped = state.n_blocks - 1 - b
                break
    if work_log:
        done, full = _work_totals(work_log, B, x.device)
        work = cfg.n_layers * (2 if guided else 1)  # guidance runs the unconditional rows too
        state.count("layer_tokens_computed", done * work)
        state.count("layer_tokens_total", full * work)
    # (x itself is not rebound: the step functions kept for replay read it)
    result = x_out.copy_(x) if static is not None else x
    return LoopOutput(x=result, nfe=nfe, nfe_per_row=nfe_row.tolist(), refreshes=refreshes,
                      skipped_blocks=skipped, remasked_per_row=remasked_row.tolist(), trace=records,
                      stats=dict(state.extras))
