"""Prompt encoding and generated-token accounting of the ``clean`` protocol; the job and the lm-eval
adapter reach them through ``dllm_bench.tasks.protocol.EvalProtocol``.

``encode_prompt`` turns a task prompt into token ids (through the tokenizer's chat template for
instruct models). ``decode_generated`` is THE place where generated ids become the token count that
throughput divides by (under either protocol) and the clean protocol's text: both stop at the first
EOS id and at the first stop sequence, and never include the prompt. ``count_generated_tokens`` is
its count alone.

Chat prompts: the whole prompt (few-shot context included) becomes ONE user message, which is what
lm-eval does with ``--apply_chat_template`` without ``--fewshot_as_multiturn``; the multi-turn
few-shot convention is not implemented.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from .base import cut_at_stop

log = logging.getLogger(__name__)


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids for ``text``; with ``chat`` and a tokenizer chat template, as one user turn.

    Plain prompts use the tokenizer's own special-token convention (``add_special_tokens=True``,
    e.g. LLaDA's BOS); a chat-templated prompt already holds its specials, so none are added.
    ``chat=True`` on a tokenizer without a template falls back to the plain prompt (logged once).
    """
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 add_generation_prompt=True, tokenize=False)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    if chat and not getattr(encode_prompt, "_warned", False):
        log.warning("chat=True but the tokenizer has no chat template: encoding the plain prompt")
        encode_prompt._warned = True  # type: ignore[attr-defined]
    return list(tokenizer(text)["input_ids"])


def _ids(token_ids) -> list[int]:
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    ids = list(token_ids)
    if ids and isinstance(ids[0], list):
        raise ValueError(f"expected one row of generated token ids, got a batch of {len(ids)} rows")
    return [int(t) for t in ids]


def _before_eos(ids: list[int], eos_id: int | Iterable[int] | None) -> list[int]:
    eos = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


def decode_generated(token_ids, eos_id: int | Iterable[int] | None, tokenizer,
                     stop_sequences: Sequence[str] = ()) -> tuple[str, int]:
    """(text, n_tokens) of one row of GENERATED ids (the prompt excluded), cut at EOS and stops.

    ``text`` is the decoded output up to (not including) the first EOS token and the earliest stop
    sequence (special tokens are kept while looking for stops such as ``</s>``, then stripped).
    ``n_tokens`` counts the tokens that produced that text: the EOS and everything after it, and the
    tokens wholly inside or after the stop sequence, are not counted.
    """
    ids = _before_eos(_ids(token_ids), eos_id)
    raw = tokenizer.decode(ids, skip_special_tokens=False)
    text = cut_at_stop(raw, list(stop_sequences))
    n = len(ids)
    if len(text) < len(raw):
        # smallest prefix of tokens whose decoding reaches the stop (decoded length grows with the
        # prefix); the token that starts the stop sequence is not counted
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if len(tokenizer.decode(ids[:mid], skip_special_tokens=False)) > len(text):
                hi = mid
            else:
                lo = mid + 1
        n = lo - 1 if lo > 0 else 0
        # a token straddling content and the stop still produced content: count it
        if len(tokenizer.decode(ids[:n], skip_special_tokens=False)) < len(text):
            n += 1
    for special in getattr(tokenizer, "all_special_tokens", []):
        if special:
            text = text.replace(special, "")
    return text, n


def count_generated_tokens(token_ids, eos_id: int | Iterable[int] | None, tokenizer=None,
                           stop_sequences: Sequence[str] = ()) -> int:
    """Generated tokens up to the first EOS / stop sequence (never the prompt): the throughput count.

    Without stop sequences the tokenizer is not needed (the count stops at the first EOS id).
    """
    if not stop_sequences:
        return len(_before_eos(_ids(token_ids), eos_id))
    if tokenizer is None:
        raise ValueError("count_generated_tokens needs a tokenizer when stop_sequences are given")
    return decode_generated(token_ids, eos_id, tokenizer, stop_sequences)[1]


END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|endoftext|>")  # LLaDA / Dream end-of-turn and EOS


def stop_token_ids(tokenizer, eos_token_id: int | None = None) -> set[int]:
    """The ids that end a generation: the model's EOS, the tokenizer's EOS and, when the vocabulary
    has them, the common end-of-turn tokens (LLaDA-Instruct's ``<|eot_id|>``, Dream's ``<|im_end|>``)."""
    ids = {i for i in (eos_token_id, getattr(tokenizer, "eos_token_id", None)) if i is not None}
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return ids
