"""The character-level tokenizer of the shipped tiny models, in the standard transformers format.

One token per character of ``CHARS`` plus five specials. Saved as ``tokenizer.json`` (built with
the ``tokenizers`` library) + ``tokenizer_config.json`` + ``special_tokens_map.json``, so a
checkpoint folder loads offline with ``AutoTokenizer.from_pretrained(folder)`` as a
``PreTrainedTokenizerFast``. No special token is added on encoding (the prompt is encoded as is,
with or without ``add_special_tokens``), and decoding joins characters without spaces.
"""
from __future__ import annotations

import json
from pathlib import Path

PAD, BOS, EOS, MASK, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|mask|>", "<|unk|>"
SPECIALS = [PAD, BOS, EOS, MASK, UNK]  # ids 0..4, in this order
CHARS = "0123456789abcdefghijklmnopqrstuvwxyz+-*=;?# \n"
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def vocab() -> dict[str, int]:
    """Token -> id: the specials first, then one id per character."""
    return {t: i for i, t in enumerate(SPECIALS + list(CHARS))}


def build_tokenizer(model_max_length: int = 512):
    """A fresh ``PreTrainedTokenizerFast`` over ``vocab()``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one piece per char
    tok.decoder = decoders.Fuse()  # join pieces with no separator
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, mask_token=MASK,
        unk_token=UNK, model_max_length=model_max_length, padding_side="left",
        clean_up_tokenization_spaces=False, chat_template=CHAT_TEMPLATE,
    )


def save_tokenizer(folder: str | Path, model_max_length: int = 512) -> Path:
    """Write the tokenizer files into ``folder`` (created if needed); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(model_max_length)
    tok.save_pretrained(str(folder))
    # Portable across transformers 4.x and 5.x: name the generic fast class (5.x writes its own
    # "TokenizersBackend"), keep the chat template inline and write the special-tokens map.
    cfg_file = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    specials = {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "mask_token": MASK, "unk_token": UNK}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return folder


def special_ids() -> dict[str, int]:
    """The ids a model config needs: ``pad_token_id``, ``bos_token_id``, ``eos_token_id``, ``mask_token_id``."""
    v = vocab()
    return {"pad_token_id": v[PAD], "bos_token_id": v[BOS], "eos_token_id": v[EOS], "mask_token_id": v[MASK]}
