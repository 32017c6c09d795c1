"""Evaluation protocols: how a task prompt becomes token ids and how generated ids become the text a
task scores. One code path for ``run.py`` jobs (``dllm_bench.job``) and the lm-eval adapter
(``dllm_bench.tasks.harness``).

``clean`` (the project's own): chat template for instruct models, tokenized without adding special
tokens on top of the template's; plain prompts with the tokenizer's own convention (LLaDA: BOS).
The output is cut at the first EOS id and at the EARLIEST stop sequence, then special tokens are
removed.

``reference`` (Fast-dLLM's lm-eval model classes, ``llada/eval_llada.py`` and ``dream/eval.py``
with the flags of their evaluation scripts), per model family:

- prompts: instruct models go through the chat template, and the rendered text is tokenized WITH
  the tokenizer's special tokens (a BOS may land in front of the template's own); base prompts are
  tokenized as is, except that Dream puts its BOS text in front (``add_bos_token=true``);
- LLaDA: the whole generation is decoded with its special tokens, cut at each stop string in the
  task's list order (``text = text.split(stop)[0]`` one after the other, so the result can differ
  from cutting at the earliest one when stops overlap), then re-tokenized and decoded without
  special tokens (so ``#3<eos>45`` becomes ``#345``). Instruct models on HumanEval: no stop cut at
  all, the whole generation decoded without special tokens;
- Dream: the decoded generation is cut at the EOS token's text, then at each stop string in list
  order; special tokens are kept. HumanEval: no stop cut (the scripts pass ``escape_until=true``).

Speed accounting does not depend on the protocol: ``n_tokens`` is always the project's count
(generated tokens up to the first EOS id or stop sequence, see ``decode_generated``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .tokens import _ids, decode_generated, encode_prompt

PROTOCOLS = ("clean", "reference")


@dataclass(frozen=True)
class ReferenceFacts:
    """What the reference harness does for one model family."""

    bos_prefix: bool        # base prompts get the BOS token's text in front (Dream's add_bos_token=true)
    cut_at_eos_text: bool   # the decoded generation is cut at the EOS token's text (Dream)
    strip_specials: bool    # after the stop cut: re-tokenize, decode without special tokens (LLaDA)
    humaneval_stops: str    # HumanEval outputs skip the stop cut for "instruct" models only, or "always"


REFERENCE = {
    "llada": ReferenceFacts(bos_prefix=False, cut_at_eos_text=False, strip_specials=True, humaneval_stops="instruct"),
    "dream": ReferenceFacts(bos_prefix=True, cut_at_eos_text=True, strip_specials=False, humaneval_stops="always"),
}


def is_humaneval(doc) -> bool:
    """The reference's test for a HumanEval request: the doc's ``task_id`` starts with "humaneval"."""
    return isinstance(doc, dict) and str(doc.get("task_id", "")).lower().startswith("humaneval")


@dataclass(frozen=True)
class EvalProtocol:
    """How prompts are encoded and generations post-processed (see the module docstring).

    name: ``clean`` or ``reference``. family: ``llada`` or ``dream`` (the reference's facts differ).
    instruct: the model is an instruct model: chat-able prompts go through its chat template.
    """

    name: str = "clean"
    family: str = "llada"
    instruct: bool = False

    def __post_init__(self):
        if self.name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.name!r}; valid: {', '.join(PROTOCOLS)}")
        if self.family not in REFERENCE:
            raise ValueError(f"unknown model family {self.family!r}; valid: {', '.join(REFERENCE)}")

    @property
    def facts(self) -> ReferenceFacts:
        return REFERENCE[self.family]

    def encode(self, tokenizer, text: str, chat: bool = True, rendered: bool = False) -> list[int]:
        """Token ids of a prompt. ``chat``: the sample allows the chat template (used when the model
        is instruct). ``rendered``: ``text`` already went through the chat template (lm-eval's
        ``--apply_chat_template``), so it is only tokenized."""
        use_chat = self.instruct and chat and bool(getattr(tokenizer, "chat_template", None))
        if self.name == "clean":
            if rendered:
                return list(tokenizer(text, add_special_tokens=False)["input_ids"])
            return encode_prompt(tokenizer, text, self.instruct and chat)
        if use_chat and not rendered:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 add_generation_prompt=True, tokenize=False)
        elif not rendered and self.facts.bos_prefix and tokenizer.bos_token:
            text = tokenizer.bos_token + text
        return list(tokenizer(text)["input_ids"])

    def postprocess(self, token_ids, tokenizer, eos_ids: int | Iterable[int] | None,
                    stops: Sequence[str] = (), doc: dict | None = None) -> tuple[str, int]:
        """(text to score, generated-token count) of one row of generated ids (prompt excluded).

        ``doc``: the task document, read only to recognise HumanEval requests as the reference does.
        """
        text, n = decode_generated(token_ids, eos_ids, tokenizer, stops)
        if self.name == "clean":
            return text, n
        return self._reference_text(_ids(token_ids), tokenizer, list(stops), doc), n

    def _reference_text(self, ids: list[int], tokenizer, stops: list[str], doc) -> str:
        facts = self.facts
        no_stops = is_humaneval(doc) and (facts.humaneval_stops == "always" or self.instruct)
        if facts.strip_specials and no_stops:
            return tokenizer.decode(ids, skip_special_tokens=True)
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if facts.cut_at_eos_text and tokenizer.eos_token:
            text = text.split(tokenizer.eos_token)[0]
        if not no_stops:
            for stop in stops:  # list order, each cut applied to the previous result
                if stop:
                    text = text.split(stop)[0]
        if facts.strip_specials:
            text = tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)
        return text
