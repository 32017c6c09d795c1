"""dLLM-Cache (Liu et al., 2025; maomaocun/dLLM-cache): per-layer feature caching for diffusion LMs.

Every step feeds the whole sequence, but each layer after the first reuses cached features: for
the prompt (the first P positions, pads included) and the response (the gen_length positions after
it) it keeps K, V, the attention output (after the output projection) and the MLP output. At the
n-th model call (counted over the whole generate(), not per block) a layer refreshes the prompt
features when (n-1) % prompt_interval_steps == 0 and the response features when
(n-1) % gen_interval_steps == 0; layer 0 always recomputes. When the response is not refreshed and
0 < transfer_ratio <= 1, the layer also recomputes the int(gen_length * transfer_ratio) response
rows whose fresh V is least cosine-similar to the cached V (per layer, per row), and the cached
response V becomes the fresh V. The layer output is always h + att + mlp with att / mlp rows fresh
or cached. Guidance (cfg_scale > 0) runs a second, unconditional stream with its own caches and
counter, and reuses the conditional-minus-unconditional logits between its refreshes.

Batches: each row keeps its own call counter and decides its own branch (rows are grouped by
branch), so a row equals its batch-size-1 run also when rows finish blocks at different steps.
Counters (``GenerationResult.stats``, summed over rows): layer calls per branch
(``layer_calls_full``, ``layer_calls_gen_refresh``, ``layer_calls_prompt_refresh``,
``layer_calls_reuse``, ``layer_calls_partial_refresh``), and ``layer_tokens_computed`` /
``layer_tokens_total``: real (non-pad) layer x token rows computed fresh vs fed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...models.layers import LayerInput
from ..registry import CACHES, check_number, golden_adapter
from ..state import Plan
from .base import Cache

FULL, GEN, PROMPT, REUSE = "full", "gen_refresh", "prompt_refresh", "reuse"


@CACHES.register("dllm_cache")
@dataclass(kw_only=True)
class DLLMCache(Cache):
    example_args = {"prompt_interval_steps": 5, "gen_interval_steps": 2, "transfer_ratio": 0.25}
    bad_args = ({"prompt_interval_steps": 0}, {"gen_interval_steps": 1.5}, {"transfer_ratio": 1.5},
                {"transfer_ratio": float("nan")})

    """Arguments under the authors' names; defaults are their LLaDA GSM8K setting."""

    prompt_interval_steps: int = 50   # K_p: refresh the prompt features every K_p calls
    gen_interval_steps: int = 7       # K_r: refresh the response features every K_r calls
    transfer_ratio: float = 0.25      # rho: share of response rows recomputed between refreshes
    cfg_interval_steps: int = 1       # refresh the guidance residual every this many calls

    def check(self):
        for name in ("prompt_interval_steps", "gen_interval_steps", "cfg_interval_steps"):
            check_number(name, getattr(self, name), lo=1, integer=True)
        check_number("transfer_ratio", self.transfer_ratio, lo=0, hi=1)

    def check_pair(self, rule, arch, profile):
        if rule.adds_queries:
            raise ValueError(f"cache 'dllm_cache' cannot run decoding {rule.name!r}: the rule adds query tokens to "
                             f"forwards, and the cache reuses per-layer features of sequence positions only")

    def setup(self, state):
        blocks = getattr(state.model, "blocks", None)
        if blocks is None or not all(hasattr(b, "attn") and hasattr(b, "mlp") for b in blocks):
            raise ValueError(f"cache 'dllm_cache' needs a dllm_bench Transformer (per-layer hooks), "
                             f"got {type(state.model).__name__}")
        self.state = state
        self.n_replace = int(state.gen_length * self.transfer_ratio) if self.transfer_ratio > 0 else None
        if state.key_mask is None:
            real = torch.full((state.batch,), state.length, dtype=torch.long)
        else:
            real = state.key_mask.sum(-1).cpu()
        self.real_len = real  # (B,) fed positions that are not padding
        self.cond = _Stream(self, state)
        self.uncond = _Stream(self, state)
        self.active = self.cond
        self.residual = None  # (B, gen_length, V) guidance residual at the response positions

    def plan(self, state):
        self.active = self.cond
        full = self.cond.begin_call(state.live.cpu())
        return Plan(0, None, refresh=full, hooks=self)

    def layer(self, i, block, h, inp):
        """The model's per-layer hook: the active stream decides what block ``i`` recomputes."""
        return self.active.layer(i, block, h, inp)

    def guided(self, forward, state, plan):
        """The authors' guidance: refresh the residual (cond - uncond logits, over the whole
        response) when (n-1) % cfg_interval_steps == 0 or n <= 5, otherwise reuse it; the
        unconditional pass runs as a separate stream of calls with its own caches."""
        cond = forward("cond")
        n = self.cond.calls
        need = self.cond.live & (((n - 1) % self.cfg_interval_steps == 0) | (n <= 5))
        if bool(need.any()):
            hc = self.cond.last
            self.active = self.uncond
            self.uncond.begin_call(need)
            forward("uncond")
            self.active = self.cond
            r = self._response_logits(hc) - self._response_logits(self.uncond.last)
            keep = need.to(r.device)[:, None, None]
            self.residual = r if self.residual is None else torch.where(keep, r, self.residual)
        ts, te = state.targets
        P = state.prompt_len
        r = self.residual[:, ts - P:te - P]
        return (cond - r) + (state.cfg_scale + 1) * r, 1 + need.long()

    def _response_logits(self, h):
        """Logits of every response position from a stream's last hidden states h (B, L, d)."""
        model, st = self.state.model, self.state
        shift = int(st.profile.shift_logits)  # Dream: position i is read from hidden state i - 1
        w = model.embed.weight if model.lm_head is None else model.lm_head.weight
        return F.linear(model.norm(h[:, st.prompt_len - shift:st.length - shift]), w)

    def kv_bytes(self, model, batch, length):
        """Cached K, V, attention and MLP outputs of every layer but the first (one stream)."""
        c = model.config
        per_pos = 2 * c.n_kv_heads * c.head_dim + 2 * c.d_model
        return (c.n_layers - 1) * batch * length * per_pos * model.dtype.itemsize


class _Stream:
    """One stream of model calls (the conditional one, or guidance's unconditional one): its own
    per-row call counters and per-layer feature caches."""

    def __init__(self, cache: DLLMCache, state):
        self.c, self.st = cache, state
        self.calls = torch.zeros(state.batch, dtype=torch.long)  # (B,) this stream's calls per row
        self.feats: dict[int, dict[str, torch.Tensor]] = {}
        self.last = None  # the last layer's output of the latest call (B, L, d)

    def begin_call(self, live: torch.Tensor) -> bool:
        """Count a call for the ``live`` rows (B,) and group them by branch. True when every live
        row recomputes everything."""
        c, st = self.c, self.st
        self.calls += live.long()
        n = self.calls - 1
        rp = live & (n % c.prompt_interval_steps == 0)
        rg = live & (n % c.gen_interval_steps == 0)
        kinds = {FULL: rp & rg, GEN: rg & ~rp, PROMPT: rp & ~rg, REUSE: live & ~rp & ~rg}
        self.live, self.groups = live, []
        for kind, rows in kinds.items():
            if bool(rows.any()):
                idx = slice(None) if bool(rows.all()) else rows.nonzero().flatten().to(st.device)
                self.groups.append((kind, idx))
        self._count(kinds)
        return bool((kinds[FULL] == live).all())

    def _count(self, kinds):
        c, st = self.c, self.st
        G, deep = st.gen_length, st.config.n_layers - 1
        real = c.real_len
        k = c.n_replace or 0
        tokens = {FULL: real, GEN: torch.full_like(real, G), PROMPT: real - G + k, REUSE: torch.full_like(real, k)}
        live = self.live
        st.count("layer_calls_full", int(live.sum()))  # layer 0
        st.count("layer_tokens_computed", int(real[live].sum()))
        st.count("layer_tokens_total", int(real[live].sum()) * (deep + 1))
        for kind, rows in kinds.items():
            st.count(f"layer_calls_{kind}", int(rows.sum()) * deep)
            st.count("layer_tokens_computed", int(tokens[kind][rows].sum()) * deep)
        partial = int((kinds[PROMPT] | kinds[REUSE]).sum()) * deep if c.n_replace is not None else 0
        st.count("layer_calls_partial_refresh", partial)

    # ------------------------------------------------------------------ the layer hook
    def layer(self, i, block, h, inp):
        if inp.where.n_extra:
            raise ValueError("cache 'dllm_cache' cannot feed a rule's extra query tokens "
                             "(it reuses per-layer features of sequence positions only)")
        if i == 0:
            out = block(h, inp, 0)  # always recomputed; its features are never read
        elif len(self.groups) == 1 and isinstance(self.groups[0][1], slice):
            out = self._branch(self.groups[0][0], self.groups[0][1], block, i, h, inp)
        else:
            out = h.clone()  # rows that do not run this call keep anything: nothing reads them
            for kind, rows in self.groups:
                out[rows] = self._branch(kind, rows, block, i, h[rows], _rows_of(inp, rows))
        if i == self.st.config.n_layers - 1:
            self.last = out
        return out

    def _store(self, i, h):
        if i not in self.feats:
            st, cfg = self.st, self.st.config
            B, L = st.batch, st.length
            kv = (B, cfg.n_kv_heads, L, cfg.head_dim)
            z = dict(dtype=h.dtype, device=h.device)
            self.feats[i] = {"k": torch.zeros(kv, **z), "v": torch.zeros(kv, **z),
                             "att": torch.zeros((B, L, cfg.d_model), **z),
                             "mlp": torch.zeros((B, L, cfg.d_model), **z)}
        return self.feats[i]

    def _branch(self, kind, r, block, i, h, inp):
        """Block ``i`` on rows ``r`` (a slice or a row index) of the batch; h (b, L, d)."""
        f, P = self._store(i, h), self.st.prompt_len
        attn, mlp, n1, n2 = block.attn, block.mlp, block.attn_norm, block.mlp_norm
        K, V, A, M = f["k"], f["v"], f["att"], f["mlp"]
        if kind == FULL:
            q, k, v = attn.project(n1(h))
            q, k = attn.rotate(q, k, inp.cos, inp.sin)
            K[r], V[r] = k, v
            a = attn.attend(q, k, v, inp.mask)
            A[r] = a
            h = h + a
            m = mlp(n2(h))
            M[r] = m
            return h + m
        if kind == GEN:
            q, k, v = attn.project(n1(h[:, P:]))
            q, k = attn.rotate(q, k, inp.cos[:, :, P:], inp.sin[:, :, P:])
            K[r, :, P:], V[r, :, P:] = k, v
            A[r, P:] = attn.attend(q, K[r], V[r], inp.mask)
            h = h + A[r]
            M[r, P:] = mlp(n2(h[:, P:]))
            return h + M[r]
        # PROMPT or REUSE: the response is cached, up to the transferred rows
        queries = []
        if kind == PROMPT:
            q, k, v = attn.project(n1(h[:, :P]))
            q, k = attn.rotate(q, k, inp.cos[:, :, :P], inp.sin[:, :, :P])
            K[r, :, :P], V[r, :, :P] = k, v
            queries.append(q)
        sel = None
        if self.c.n_replace is not None:
            sel, q_sel = self._transfer(f, r, attn, n1(h[:, P:]), inp)
            if q_sel is not None:
                queries.append(q_sel)
        if queries:
            a = attn.attend(torch.cat(queries, dim=2), K[r], V[r], inp.mask)
            if kind == PROMPT:
                A[r, :P] = a[:, :P]
            if sel is not None:
                _put(A, r, P, sel, a[:, a.shape[1] - sel.shape[1]:])
        h = h + A[r]
        rows = [h[:, :P]] if kind == PROMPT else []
        if sel is not None:
            rows.append(_gather(h[:, P:], sel))
        if rows:
            m = mlp(n2(torch.cat(rows, dim=1)))
            if kind == PROMPT:
                M[r, :P] = m[:, :P]
            if sel is not None:
                _put(M, r, P, sel, m[:, m.shape[1] - sel.shape[1]:])
        return h + M[r]

    def _transfer(self, f, r, attn, xr, inp):
        """Pick the response rows whose fresh V is least similar to the cached one, replace the
        cached response V by the fresh V, the selected rows' K by fresh K. xr (b, G, d) normed.
        -> (sel (b, k) or None, their rotated queries (b, H, k, D) or None)."""
        P = self.st.prompt_len
        b, G, _ = xr.shape
        V = f["v"]
        v = attn.v_proj(xr)  # (b, G, Hkv * D)
        old = V[r, :, P:].transpose(1, 2).reshape(b, G, -1)
        sim = F.cosine_similarity(v, old, dim=-1, eps=1e-8)  # (b, G)
        V[r, :, P:] = v.view(b, G, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        k = self.c.n_replace
        if k == 0:
            return None, None
        sel = sim.topk(k, dim=-1, largest=False).indices.sort(dim=-1).values  # (b, k)
        q, key, _ = attn.project(_gather(xr, sel))
        cs = inp.cos[:, :, P:].gather(2, sel[:, None, :, None].expand(-1, 1, -1, inp.cos.shape[-1]))
        sn = inp.sin[:, :, P:].gather(2, sel[:, None, :, None].expand(-1, 1, -1, inp.sin.shape[-1]))
        q, key = attn.rotate(q, key, cs, sn)
        K = f["k"]
        part = K[r, :, P:]
        K[r, :, P:] = part.scatter(2, sel[:, None, :, None].expand_as(key), key)
        return sel, q


def _gather(t, sel):
    """Rows ``sel`` (b, k) of t (b, G, d)."""
    return t.gather(1, sel[..., None].expand(-1, -1, t.shape[-1]))


def _put(store, r, P, sel, val):
    """store (B, L, d): rows P + sel of batch rows r := val (b, k, d)."""
    part = store[r, P:]
    store[r, P:] = part.scatter(1, sel[..., None].expand_as(val), val)


def _rows_of(inp, rows):
    """The LayerInput of batch rows ``rows``."""
    return LayerInput(inp.cos[rows], inp.sin[rows], None if inp.mask is None else inp.mask[rows], None,
                      inp.where, inp.positions[rows], inp.rotary)


# the golden file's per-branch layer-call counters -> ours
_GOLDEN_STATS = {"full": "layer_calls_full", "gen_refresh_only": "layer_calls_gen_refresh",
                 "prompt_refresh_only": "layer_calls_prompt_refresh", "reuse": "layer_calls_reuse",
                 "partial_refresh_calls": "layer_calls_partial_refresh"}


@golden_adapter("dllm_cache")
def golden_case(case: dict) -> dict:
    """A case of ``methods/dllm_cache.json``: LLaDA's ``generate`` or Dream's ``diffusion_generate``
    (alg "entropy", whole-sequence schedule) with the four dLLMCacheConfig fields. Batched cases
    are passed as the padded tensor without a mask: the reference attends to its pads as prompt
    tokens. The reference counts layer calls per batch; ours are per row, hence the factor."""
    p = case["params"]
    kw = {name: p[name] for name in DLLMCache.arg_names()}
    kw.update(cache="dllm_cache", decoding="fixed", steps=p["steps"], temperature=p.get("temperature") or 0.0)
    if "max_new_tokens" in p:  # Dream
        if p.get("alg") != "entropy" or p.get("top_p") or p.get("top_k"):
            raise ValueError(f"Dream dllm_cache cases replay alg='entropy' without top-p/top-k, got {p}")
        kw.update(gen_length=p["max_new_tokens"], block_length=None)
    else:
        kw.update(gen_length=p["gen_length"], block_length=p["block_length"], cfg_scale=p["cfg_scale"],
                  remasking=p["remasking"])
    rows = p["input"].get("batch_size", 1)
    kw["expect_stats"] = {ours: case["extra"][theirs] * rows for theirs, ours in _GOLDEN_STATS.items()}
    return kw
